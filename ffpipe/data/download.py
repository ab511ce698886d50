"""Fetching dataset files from their mirrors, checked by md5, without ever leaving a partial file behind.

Each file is streamed into a hidden temp file in the target folder, hashed on the way, and moved into place
with `os.replace` only once its md5 matches the published one; any failure (network, checksum, Ctrl-C)
deletes the temp file. Being in the same folder makes the final rename atomic, so a reader either sees the
whole verified file or none. Mirrors are tried in order (`catalog.MIRRORS`), and every failed attempt is
recorded so that the caller can tell the user exactly which URLs were tried and why each failed.

CIFAR-10 comes as one tarball; only the six batch files are taken out of it, by exact member name, each
through the same temp-file-and-rename step, so a hostile or damaged archive cannot write outside the target
folder (no `extractall`, no member paths used as file names).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import ffpipe.data.catalog as catalog

TIMEOUT_S = 30.0
"""Seconds without progress before a connection or read gives up (urllib's socket timeout)."""

CHUNK = 1 << 20


class DownloadError(Exception):
    """Every mirror failed for some file; `attempts` holds one "URL: reason" line per try."""

    def __init__(self, attempts: list[str]) -> None:
        super().__init__("; ".join(attempts))
        self.attempts = attempts


def _write_atomically(dest: Path, chunks: Iterable[bytes], md5: str | None = None) -> None:
    """Write `chunks` to `dest` through a temp file in the same folder; check the md5 first if given."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise ValueError(f"md5 {digest.hexdigest()} does not match the published {md5}")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared data folder must stay readable by all
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _read_chunks(stream: BinaryIO) -> Iterable[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in _read_chunks(fh):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(urls: list[str], md5: str, dest: Path, attempts: list[str]) -> bool:
    """Put the file with `md5` at `dest` from the first URL that delivers it; log failures in `attempts`."""
    for url in urls:
        print(f"ffpipe: downloading {url}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                _write_atomically(dest, _read_chunks(response), md5)
            return True
        except urllib.error.HTTPError as exc:
            attempts.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            attempts.append(f"{url}: {exc.reason}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            attempts.append(f"{url}: {str(exc) or type(exc).__name__}")
    return False


def _extract_cifar(archive: Path, target: Path) -> None:
    """Copy the six batch files out of the CIFAR-10 tarball into `target`, in one pass over the archive."""
    wanted = {
        f"{catalog.CIFAR10_ARCHIVE_DIR}/{n}": n
        for n in (*catalog.CIFAR10_TRAIN_BATCHES, catalog.CIFAR10_TEST_BATCH)
    }
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = wanted.get(member.name)
            if name is None or not member.isfile():
                continue
            source = tar.extractfile(member)
            if source is not None:
                _write_atomically(target / name, _read_chunks(source))
                del wanted[member.name]
    if wanted:
        raise ValueError(f"the archive lacks {', '.join(sorted(wanted))}")


def download_dataset(name: str, target: Path) -> None:
    """Fetch every missing file of dataset `name` into `target`; raise DownloadError listing all attempts.

    Files already in `target` are kept as they are (they may be the user's, and the reader validates them);
    only the CIFAR-10 tarball, our own intermediate, is re-checked against its md5 before reuse.
    """
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError([f"cannot create {target}: {exc.strerror or exc}"]) from None
    try:
        _download_into(name, target)
    except DownloadError:
        if created and not any(target.iterdir()):
            target.rmdir()  # a failed first download leaves no trace, not even an empty folder
        raise


def _download_into(name: str, target: Path) -> None:
    attempts: list[str] = []
    bases = catalog.MIRRORS.get(name, [])
    for filename, md5 in catalog.MD5S.get(name, {}).items():
        dest = target / filename
        urls = [base + filename for base in bases]
        if filename == catalog.CIFAR10_ARCHIVE:
            reuse = dest.is_file() and file_md5(dest) == md5
            if not reuse and not fetch(urls, md5, dest, attempts):
                raise DownloadError(attempts)
            try:
                _extract_cifar(dest, target)
            except (OSError, EOFError, tarfile.TarError, zlib.error, ValueError) as exc:
                raise DownloadError([f"{dest}: cannot unpack ({exc})"]) from None
            dest.unlink()
        elif not (dest.exists() or dest.with_suffix("").exists()) and not fetch(urls, md5, dest, attempts):
            raise DownloadError(attempts)
