"""Where a dataset's files are looked for, in a fixed order, and what the user is told when they are nowhere.

Order (first complete set wins):
  1. the explicit `data_dir` (`--data-dir`, config `data.dir`): the folder itself, then `<data_dir>/<name>/`;
  2. `$FFPIPE_DATA_DIR/<name>/`;
  3. `~/.cache/ffpipe/<name>/`;
  4. `/usr/share/datasets/<name with dashes>/`, where Debian's dataset-fashion-mnist puts its files;
  5. a download into `$FFPIPE_DATA_DIR/<name>/` if that variable is set, else `~/.cache/ffpipe/<name>/`.
A CIFAR-10 folder also counts when it holds the tarball's `cifar-10-batches-py/` subfolder. A folder with only
some of the files does not count, but the error says which files it lacks, because that is the usual mistake.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ffpipe.data.catalog as catalog
import ffpipe.data.download as download
from ffpipe.data.catalog import DatasetSpec
from ffpipe.errors import FFPipeError

ENV_VAR = "FFPIPE_DATA_DIR"
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")


@dataclass(frozen=True)
class Location:
    """A folder holding a complete set of files, and how it was found."""

    path: Path
    origin: str  # "data_dir" | "FFPIPE_DATA_DIR" | "cache" | "system" | "download" | "package"
    files: dict[str, Path]  # role ("train_images", "data_batch_1", ...) -> file


def cache_root() -> Path:
    return Path.home() / ".cache" / "ffpipe"


def env_root() -> Path | None:
    value = os.environ.get(ENV_VAR, "")
    return Path(value).expanduser() if value else None


def download_target(spec: DatasetSpec) -> Path:
    root = env_root()
    return (root if root is not None else cache_root()) / spec.name


def candidates(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Folders to search, best first, each with the name of the rule that produced it."""
    found: list[tuple[Path, str]] = []
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser()
        found += [(root, "data_dir"), (root / spec.name, "data_dir")]
    root = env_root()
    if root is not None:
        found.append((root / spec.name, ENV_VAR))
    found.append((cache_root() / spec.name, "cache"))
    found.append((SYSTEM_DATA_ROOT / spec.system_dirname, "system"))
    unique: dict[Path, str] = {}
    for path, origin in found:
        unique.setdefault(path, origin)
    return list(unique.items())


def _idx_variants(base: str) -> list[str]:
    """Accepted names of one IDX file: gzip or raw, and the dotted `train-images.idx3-ubyte` form."""
    dotted = base.replace("-idx", ".idx")
    return [base + ".gz", base, dotted + ".gz", dotted]


def find_files(spec: DatasetSpec, folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The files of `spec` in `folder` by role, and the names of those missing."""
    if spec.format == "idx":
        wanted = {role: _idx_variants(base) for role, base in catalog.IDX_FILES.items()}
    else:
        batches = (*catalog.CIFAR10_TRAIN_BATCHES, catalog.CIFAR10_TEST_BATCH)
        wanted = {name: [name] for name in batches}
    files: dict[str, Path] = {}
    missing: list[str] = []
    for role, names in wanted.items():
        hit = next((folder / n for n in names if (folder / n).is_file()), None)
        if hit is None:
            missing.append(names[0])
        else:
            files[role] = hit
    return files, missing


def search_folder(spec: DatasetSpec, folder: Path) -> tuple[Path | None, dict[str, Path], str]:
    """(the folder with a complete set, its files, "") if `folder` has one, else (None, {}, why not)."""
    subfolders = [folder, folder / catalog.CIFAR10_ARCHIVE_DIR] if spec.format == "cifar" else [folder]
    closest: tuple[Path, list[str]] | None = None
    for sub in subfolders:
        if not sub.is_dir():
            continue
        files, missing = find_files(spec, sub)
        if not missing:
            return sub, files, ""
        if closest is None or len(missing) < len(closest[1]):
            closest = (sub, missing)
    if closest is None:
        return None, {}, "no such folder"
    where = "" if closest[0] == folder else f" in {closest[0].name}/"
    return None, {}, f"missing {', '.join(closest[1])}{where}"


def how_to_obtain(spec: DatasetSpec) -> str:
    where = f"${ENV_VAR}/{spec.name}/ or {cache_root() / spec.name}/, or pass --data-dir (config data.dir)"
    if spec.format == "cifar":
        return (
            f"download {catalog.CIFAR10_ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html and unpack "
            f"it into {where}"
        )
    names = ", ".join(f"{n}.gz" for n in catalog.IDX_FILES.values())
    text = f"put {names} (gzip or raw) into {where}"
    if spec.name == "fashion_mnist":
        text += f"; or `apt-get install dataset-fashion-mnist` (installs {SYSTEM_DATA_ROOT}/fashion-mnist/)"
    return text


def locate(
    spec: DatasetSpec, data_dir: str | os.PathLike | None = None, allow_download: bool = True
) -> Location:
    """The first folder with a complete set of files, downloading as the last resort; else one FFPipeError."""
    tried: list[str] = []
    for folder, origin in candidates(spec, data_dir):
        hit, files, reason = search_folder(spec, folder)
        if hit is not None:
            return Location(hit, origin, files)
        tried.append(f"{folder} ({origin}): {reason}")
    attempts: list[str] = []
    if allow_download:
        target = download_target(spec)
        try:
            download.download_dataset(spec.name, target)
        except download.DownloadError as exc:
            attempts = exc.attempts
        else:
            hit, files, reason = search_folder(spec, target)
            if hit is not None:
                return Location(hit, "download", files)
            attempts = [f"{target}: {reason} after the download"]
    lines = [f"dataset {spec.name!r} not found. Looked in:"]
    lines += [f"  {t}" for t in tried]
    if allow_download:
        lines.append(f"Download into {download_target(spec)} failed:")
        lines += [f"  {a}" for a in attempts]
    else:
        lines.append("Downloading was not allowed.")
    lines.append(f"To get it: {how_to_obtain(spec)}.")
    raise FFPipeError("\n".join(lines))
