"""Where datasets are looked for, what the user is told when they are missing, and the download path.

Downloads run against an `http.server` on 127.0.0.1 started inside the test; `catalog.MIRRORS` and
`catalog.MD5S` are pointed at it, so nothing here touches the network.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ffpipe.data import catalog, load_dataset, locate
from ffpipe.errors import FFPipeError

IDX_NAMES = [f"{base}.gz" for base in catalog.IDX_FILES.values()]
CIFAR_NAMES = [*catalog.CIFAR10_TRAIN_BATCHES, catalog.CIFAR10_TEST_BATCH]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real HOME, FFPIPE_DATA_DIR, /usr/share/datasets or internet for any test in this file."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOT", tmp_path / "system")
    for name in list(catalog.MIRRORS):
        monkeypatch.setitem(catalog.MIRRORS, name, [])
    return tmp_path


def touch_dataset(folder: Path, names=IDX_NAMES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def found(name="mnist", data_dir=None) -> locate.Location:
    return locate.locate(catalog.SPECS[name], data_dir, allow_download=False)


def test_lookup_order(isolated, monkeypatch):
    explicit = touch_dataset(isolated / "explicit")
    env = touch_dataset(isolated / "env" / "mnist")
    cache = touch_dataset(isolated / "home" / ".cache" / "ffpipe" / "mnist")
    system = touch_dataset(isolated / "system" / "mnist")
    monkeypatch.setenv(locate.ENV_VAR, str(isolated / "env"))
    assert (found(data_dir=explicit).path, found(data_dir=explicit).origin) == (explicit, "data_dir")
    assert (found().path, found().origin) == (env, "FFPIPE_DATA_DIR")
    monkeypatch.delenv(locate.ENV_VAR)
    assert (found().path, found().origin) == (cache, "cache")
    for f in cache.iterdir():
        f.unlink()
    assert (found().path, found().origin) == (system, "system")


def test_explicit_dir_may_be_the_parent(isolated):
    root = isolated / "datasets"
    touch_dataset(root / "mnist")
    assert found(data_dir=root).path == root / "mnist"
    assert found(data_dir=str(root / "mnist")).path == root / "mnist"


def test_system_dir_uses_dashes_and_raw_or_dotted_names(isolated):
    folder = touch_dataset(
        isolated / "system" / "fashion-mnist", ["train-images.idx3-ubyte", "train-labels-idx1-ubyte"]
    )
    touch_dataset(folder, ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"])
    location = found("fashion_mnist")
    assert location.origin == "system"
    assert location.files["train_images"] == folder / "train-images.idx3-ubyte"


def test_cifar_tarball_folder_counts(isolated):
    cache = isolated / "home" / ".cache" / "ffpipe" / "cifar10"
    touch_dataset(cache / "cifar-10-batches-py", CIFAR_NAMES[1:])
    with pytest.raises(
        FFPipeError, match=rf"{cache} \(cache\): missing data_batch_1 in cifar-10-batches-py/"
    ):
        found("cifar10")
    touch_dataset(cache / "cifar-10-batches-py", CIFAR_NAMES)
    assert found("cifar10").path == cache / "cifar-10-batches-py"


def test_not_found_lists_every_path_and_how_to_get_it(isolated, monkeypatch):
    monkeypatch.setenv(locate.ENV_VAR, str(isolated / "env"))
    partial = touch_dataset(isolated / "env" / "fashion_mnist", IDX_NAMES[:3])
    with pytest.raises(FFPipeError) as err:
        load_dataset("fashion_mnist", data_dir=isolated / "mine", download=False)
    message = str(err.value)
    for folder in [
        isolated / "mine",
        isolated / "mine" / "fashion_mnist",
        partial,
        isolated / "home" / ".cache" / "ffpipe" / "fashion_mnist",
        isolated / "system" / "fashion-mnist",
    ]:
        assert str(folder) in message
    assert f"missing {IDX_NAMES[3]}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FFPIPE_DATA_DIR/fashion_mnist/" in message


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(
        FFPipeError, match="unknown dataset 'mnits'; choose one of: fashion_mnist_small, mnist, "
    ):
        load_dataset("mnits")


def idx_gz(magic: int, array: np.ndarray) -> bytes:
    raw = struct.pack(f">i{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    return gzip.compress(raw, mtime=0)


def small_mnist_files(n_train: int = 30, n_test: int = 10) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    train_y, test_y = np.arange(n_train) % 10, np.arange(n_test) % 10
    return {
        "train-images-idx3-ubyte.gz": idx_gz(2051, rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_gz(2049, train_y),
        "t10k-images-idx3-ubyte.gz": idx_gz(2051, rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_gz(2049, test_y),
    }


@pytest.fixture
def server(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def write_files(root: Path, subdir: str, files: dict[str, bytes]) -> None:
    (root / subdir).mkdir(parents=True)
    for name, data in files.items():
        (root / subdir / name).write_bytes(data)


@pytest.fixture
def small_mnist(monkeypatch):
    files = small_mnist_files()
    monkeypatch.setitem(catalog.MD5S, "mnist", {n: hashlib.md5(d).hexdigest() for n, d in files.items()})
    monkeypatch.setitem(
        catalog.SPECS, "mnist", replace(catalog.SPECS["mnist"], train_size=20, val_size=10, test_size=10)
    )
    return files


def test_download_tries_mirrors_until_md5_matches(isolated, server, small_mnist, monkeypatch, capsys):
    root, url = server
    write_files(root, "bad", {name: data[:-1] + b"x" for name, data in small_mnist.items()})
    write_files(root, "good", small_mnist)
    monkeypatch.setitem(catalog.MIRRORS, "mnist", [f"{url}/missing/", f"{url}/bad/", f"{url}/good/"])
    dataset = load_dataset("mnist")
    cache = isolated / "home" / ".cache" / "ffpipe" / "mnist"
    assert dataset.source == str(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(small_mnist)  # no temp file left
    for name, data in small_mnist.items():
        assert (cache / name).read_bytes() == data
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (20, 10, 10)
    assert f"downloading {url}/good/t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err
    assert found().origin == "cache"  # the next run finds the download without the network


def test_download_goes_to_ffpipe_data_dir_when_set(isolated, server, small_mnist, monkeypatch):
    root, url = server
    write_files(root, "good", small_mnist)
    monkeypatch.setitem(catalog.MIRRORS, "mnist", [f"{url}/good/"])
    monkeypatch.setenv(locate.ENV_VAR, str(isolated / "data"))
    assert load_dataset("mnist").source == str(isolated / "data" / "mnist")


def test_bad_checksum_leaves_nothing_and_says_everything(isolated, server, small_mnist, monkeypatch):
    root, url = server
    write_files(root, "bad", {name: data + b"junk" for name, data in small_mnist.items()})
    mirrors = [f"{url}/bad/", f"{url}/missing/"]
    monkeypatch.setitem(catalog.MIRRORS, "mnist", mirrors)
    with pytest.raises(FFPipeError) as err:
        load_dataset("mnist", data_dir=isolated / "nowhere")
    message = str(err.value)
    cache = isolated / "home" / ".cache" / "ffpipe" / "mnist"
    assert not cache.exists()  # no temp file, and not even the empty folder the download made
    first = IDX_NAMES[0]
    assert f"{url}/bad/{first}: md5 " in message and "does not match the published" in message
    assert f"{url}/missing/{first}: HTTP 404" in message
    assert str(isolated / "nowhere") in message and str(cache) in message
    assert "FFPIPE_DATA_DIR/mnist/" in message


def test_no_network_is_one_clear_error(isolated, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    monkeypatch.setitem(catalog.MIRRORS, "mnist", [f"http://127.0.0.1:{port}/"])
    with pytest.raises(FFPipeError, match=rf"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz: .*refused"):
        load_dataset("mnist")
    assert not (isolated / "home" / ".cache" / "ffpipe" / "mnist").exists()


def cifar_tarball(evil_name: str) -> bytes:
    rng = np.random.default_rng(2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        members = {f"cifar-10-batches-py/{n}": n for n in CIFAR_NAMES} | {evil_name: "evil"}
        for member, name in members.items():
            n = 4 if name.startswith("data_batch") else 5
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_cifar_download_unpacks_only_the_batches(isolated, server, monkeypatch):
    root, url = server
    archive = cifar_tarball(evil_name="../../evil")
    write_files(root, "cifar", {catalog.CIFAR10_ARCHIVE: archive})
    monkeypatch.setitem(catalog.MIRRORS, "cifar10", [f"{url}/cifar/"])
    monkeypatch.setitem(catalog.MD5S, "cifar10", {catalog.CIFAR10_ARCHIVE: hashlib.md5(archive).hexdigest()})
    spec = replace(catalog.SPECS["cifar10"], train_size=15, val_size=5, test_size=5)
    monkeypatch.setitem(catalog.SPECS, "cifar10", spec)
    dataset = load_dataset("cifar10")
    target = isolated / "home" / ".cache" / "ffpipe" / "cifar10"
    assert sorted(p.name for p in target.iterdir()) == sorted(CIFAR_NAMES)  # tarball and temp files gone
    assert not list(isolated.rglob("evil"))
    assert dataset.image_shape == (3, 32, 32)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (15, 5, 5)


def test_found_files_are_checked_against_the_catalog(isolated):
    folder = isolated / "home" / ".cache" / "ffpipe" / "mnist"
    write_files(isolated / "home" / ".cache" / "ffpipe", "mnist", small_mnist_files())
    with pytest.raises(
        FFPipeError, match=rf"{folder}/train-images-idx3-ubyte.gz: 30 samples, but mnist has 60000"
    ):
        load_dataset("mnist")
