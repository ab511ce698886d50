"""Atomic, partition-independent checkpoints.

A checkpoint is a directory `RUN/checkpoints/epoch-000N/` holding one shard per pipeline stage,
`blocks-AAA-BBB.pt` (AAA..BBB: the stage's global block indices, inclusive), each a `torch.save` of
`{"blocks": {global_block_index: state}}`, plus `manifest.json`.

Why this layout:

- *Partition independence.* Each FF block owns its module, optimizer and head state (see `ffpipe.ff.optim`), and
  the state is keyed by the *global* block index. Loading merges all shards into one `{index: state}` dict, so
  a run saved with stages (0-1, 2-3) resumes with stages (0, 1-3) or in a single process.
- *Stages save in parallel.* Every stage writes its own shard; nothing is funnelled through one process.
- *Completeness by manifest.* `manifest.json` is written last, after every shard, and lists the shards it
  vouches for. A directory without a manifest is an interrupted save and is ignored by `latest_checkpoint`.
  Before a stage overwrites a shard it removes the manifest, so a re-save of an existing epoch is
  incomplete until it finishes, never a mix of two saves that claims to be whole.
- *Atomic files.* Every file goes to a temporary name in the same directory, is fsynced, then renamed over
  the target with `os.replace`. A crash leaves the old file or the new one, never a partial one.
- *Safe loading.* Shards are read with `torch.load(weights_only=True)`: tensors, numbers, strings, lists,
  tuples and dicts only. A shard that smuggles an arbitrary class is refused instead of executed.
- *No scheduler state.* LR schedules are a pure function of the epoch (`ffpipe.ff.optim.lr_at`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from ffpipe.errors import FFPipeError

MANIFEST = "manifest.json"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_SHARD = re.compile(r"^blocks-(\d+)-(\d+)\.pt$")


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: on POSIX the directory entry itself must be flushed."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: it creates mode 0600; O_CREAT with 0666 lets the umask decide, as for open().
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old content or all of the new, never a partial file."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` with the guarantees of `atomic_write_bytes`, streamed to disk, not held in memory."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_dir(run_dir: str | os.PathLike, epoch: int) -> Path:
    """`RUN/checkpoints/epoch-000N`: zero-padded so the names also sort by epoch."""
    return Path(run_dir) / "checkpoints" / f"epoch-{epoch:04d}"


def _shard_range(path: Path) -> tuple[int, int] | None:
    m = _SHARD.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _shards(ckpt_dir: Path) -> dict[Path, tuple[int, int]]:
    found = {p: _shard_range(p) for p in sorted(ckpt_dir.glob("blocks-*.pt"))}
    return {p: r for p, r in found.items() if r is not None}


def save_shard(ckpt_dir: str | os.PathLike, blocks: dict[int, dict]) -> Path:
    """Write one stage's shard: `blocks` maps each of its (contiguous) global block indices to opaque state.

    Shards left in the directory by an earlier, differently partitioned save whose range overlaps this one are
    removed: within one save the stages' ranges are disjoint, so an overlapping shard can only be stale.
    """
    if not blocks:
        raise ValueError("save_shard needs at least one block")
    indices = sorted(blocks)
    if any(not isinstance(i, int) or isinstance(i, bool) for i in indices):
        raise ValueError(f"block indices must be ints, got {indices}")
    lo, hi = indices[0], indices[-1]
    if lo < 0 or indices != list(range(lo, hi + 1)):
        raise ValueError(f"a shard holds a contiguous range of block indices, got {indices}")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / MANIFEST).unlink(missing_ok=True)
    path = ckpt_dir / f"blocks-{lo:03d}-{hi:03d}.pt"
    for other, (a, b) in _shards(ckpt_dir).items():
        if other != path and a <= hi and lo <= b:
            other.unlink(missing_ok=True)
    atomic_torch_save({"blocks": {i: blocks[i] for i in indices}}, path)
    return path


def _coverage_problem(ranges: dict[str, tuple[int, int]], num_blocks: int) -> str | None:
    """Why the shard ranges do not cover 0..num_blocks-1 exactly once, or None if they do."""
    owner: dict[int, str] = {}
    for name, (a, b) in sorted(ranges.items(), key=lambda kv: kv[1]):
        for i in range(a, b + 1):
            if i in owner:
                return f"block {i} is in both {owner[i]} and {name}"
            owner[i] = name
    missing = [i for i in range(num_blocks) if i not in owner]
    if missing:
        return f"no shard holds block(s) {', '.join(map(str, missing))}"
    extra = sorted(i for i in owner if i >= num_blocks)
    if extra:
        return f"block(s) {', '.join(map(str, extra))} are beyond num_blocks={num_blocks}"
    return None


def write_manifest(ckpt_dir: str | os.PathLike, meta: dict) -> Path:
    """Mark a checkpoint complete. Call once, after every stage's `save_shard` has returned.

    `meta` must be JSON-able and hold `num_blocks` (int); typically also epoch, step, fingerprint, config.
    The shard list is checked (from the file names) to cover every block exactly once and recorded as
    `meta["shards"]`, so loading reads exactly the shards this manifest vouches for.
    """
    ckpt_dir = Path(ckpt_dir)
    num_blocks = meta.get("num_blocks")
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"manifest meta needs num_blocks >= 1, got {num_blocks!r}")
    ranges = {p.name: r for p, r in _shards(ckpt_dir).items()}
    problem = _coverage_problem(ranges, num_blocks)
    if problem:
        raise ValueError(f"cannot complete checkpoint {ckpt_dir}: {problem}")
    manifest = {**meta, "shards": sorted(ranges)}
    path = ckpt_dir / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return path


def _complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _EPOCH_DIR.match(d.name)
        if m and (d / MANIFEST).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None; incomplete ones are skipped."""
    found = _complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept either a checkpoint directory or a run directory (meaning: its latest complete checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise FFPipeError(f"checkpoint path {path} does not exist")
    if (path / MANIFEST).is_file():
        return path
    if _EPOCH_DIR.match(path.name):
        raise FFPipeError(f"checkpoint {path} is incomplete (no {MANIFEST}; the save was interrupted)")
    latest = latest_checkpoint(path)
    if latest is None:
        raise FFPipeError(f"no complete checkpoint under {path}")
    return latest


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _check_fingerprint(saved: dict, current: dict) -> None:
    """One-line error naming the first differing key; `current` goes through JSON so tuples equal lists."""
    mine = _flatten(json.loads(json.dumps(current)))
    theirs = _flatten(saved)
    for key in list(mine) + [k for k in theirs if k not in mine]:
        a, b = theirs.get(key, "<missing>"), mine.get(key, "<missing>")
        if a != b:
            raise FFPipeError(
                f"checkpoint is for a different architecture: {key} {a} != {b} (checkpoint vs this run)"
            )


def _read_manifest(ckpt_dir: Path) -> dict:
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        raise FFPipeError(f"checkpoint {ckpt_dir} is incomplete or not a checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FFPipeError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise FFPipeError(f"{path} is not an ffpipe checkpoint manifest")
    if not isinstance(manifest.get("num_blocks"), int):
        raise FFPipeError(f"{path} has no valid num_blocks")
    return manifest


def _load_failure(e: Exception) -> str:
    """The one informative sentence of a `torch.load` failure (its messages run to several paragraphs)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    unsafe = [line for line in lines if line.startswith("WeightsUnpickler error:")]
    if unsafe:
        detail = unsafe[0].removeprefix("WeightsUnpickler error:").split(". ")[0].strip()
        return f"refused to unpickle a non-tensor object: {detail}"
    return f"{type(e).__name__}: {lines[0].split('. ')[0]}" if lines else type(e).__name__


def _read_shard(path: Path) -> dict[int, dict]:
    expected = _shard_range(path)
    if expected is None:
        raise FFPipeError(f"{path.name} is not a shard name (blocks-AAA-BBB.pt)")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # corrupt/unsafe files raise many types; all mean "cannot use this shard"
        raise FFPipeError(f"cannot load checkpoint shard {path} ({_load_failure(e)})") from None
    blocks = obj.get("blocks") if isinstance(obj, dict) else None
    lo, hi = expected
    if not isinstance(blocks, dict) or sorted(blocks) != list(range(lo, hi + 1)):
        raise FFPipeError(f"checkpoint shard {path} does not hold blocks {lo}..{hi} as its name says")
    return blocks


def load_checkpoint(
    ckpt_dir: str | os.PathLike, fingerprint: dict | None = None
) -> tuple[dict, dict[int, dict]]:
    """Read a complete checkpoint: `(manifest, {global_block_index: state})`, tensors on CPU.

    If `fingerprint` is given it must equal the manifest's (compared key by key, nested dicts as dotted
    names) before any shard is read, so resuming a different architecture fails fast with one line.
    """
    ckpt_dir = Path(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    if fingerprint is not None:
        _check_fingerprint(manifest.get("fingerprint") or {}, fingerprint)
    names = manifest["shards"]
    ranges = {}
    for name in names:
        r = _shard_range(Path(str(name)))
        if r is None:
            raise FFPipeError(f"{ckpt_dir / MANIFEST} lists {name!r}, which is not a shard name")
        ranges[name] = r
    problem = _coverage_problem(ranges, manifest["num_blocks"])
    if problem:
        raise FFPipeError(f"checkpoint {ckpt_dir} is inconsistent: {problem}")
    merged: dict[int, dict] = {}
    for name in names:
        path = ckpt_dir / name
        if not path.is_file():
            raise FFPipeError(f"checkpoint shard {path} is missing")
        merged.update(_read_shard(path))
    return manifest, dict(sorted(merged.items()))


def prune_checkpoints(run_dir: str | os.PathLike, keep: int = 2) -> None:
    """Delete all but the `keep` newest complete checkpoints, and interrupted saves older than the newest.

    Interrupted saves *newer* than the newest complete checkpoint are left alone: one may be in progress.
    The manifest goes first, so a deletion cut short leaves an incomplete directory, never a damaged
    "complete" one.
    """
    if keep < 1:
        raise FFPipeError(f"keep must be >= 1 (the newest checkpoint is never deleted), got {keep}")
    complete = _complete_checkpoints(run_dir)
    if not complete:
        return
    newest_epoch = complete[-1][0]
    doomed = [d for _, d in complete[:-keep]]
    for d in (Path(run_dir) / "checkpoints").iterdir():
        m = _EPOCH_DIR.match(d.name)
        if m and d.is_dir() and not (d / MANIFEST).exists() and int(m.group(1)) < newest_epoch:
            doomed.append(d)
    for d in doomed:
        (d / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(d)


def diff_checkpoints(a: str | os.PathLike, b: str | os.PathLike) -> dict:
    """Per block: max |a − b| over its FF weights and whether they are bitwise identical (`torch.equal`).

    Compares the `block` and `objective` state (weights, biases, BN and peer-norm buffers, significance), the
    state that defines the FF network; head slices are compared separately under `head`.
    """
    _, left = load_checkpoint(resolve_checkpoint(a))
    _, right = load_checkpoint(resolve_checkpoint(b))
    if sorted(left) != sorted(right):
        raise FFPipeError(f"the checkpoints hold different blocks: {sorted(left)} vs {sorted(right)}")
    rows = []
    for index in sorted(left):
        row: dict = {"index": index}
        for part in ("block", "head"):
            pairs = [(k, t, right[index].get(part, {}).get(k)) for k, t in left[index].get(part, {}).items()
                     if isinstance(t, torch.Tensor)]
            if part == "block":
                pairs += [(k, t, right[index]["objective"].get(k)) for k, t in left[index]["objective"].items()
                          if isinstance(t, torch.Tensor)]
            if not pairs:
                continue
            if any(r is None or r.shape != t.shape for _, t, r in pairs):
                raise FFPipeError(f"block {index}: the checkpoints have different {part} shapes")
            row[part] = {"max_abs_diff": max(float((t.double() - r.double()).abs().max()) if t.numel() else 0.0
                                             for _, t, r in pairs),
                         "identical": all(torch.equal(t, r) for _, t, r in pairs)}
        rows.append(row)
    return {"blocks": rows, "identical": all(r["block"]["identical"] for r in rows)}
