import json
import os

import pytest
import torch

from ffpipe.errors import FFPipeError
from ffpipe.run import checkpoint as ck

FINGERPRINT = {"model": {"width": 32, "depth": 4, "kernel": (3, 3)}, "dataset": "mnist"}


def _block_state(seed: int) -> dict:
    """Module + Adam state of a tiny block after two steps: the kind of opaque state a stage checkpoints."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        lin(torch.randn(4, 5)).pow(2).sum().backward()
        opt.step()
    head = {"name": "linear", "sizes": [3, 10]}
    return {"module": lin.state_dict(), "optim": opt.state_dict(), "head": head}


def _save(run_dir, epoch, states, partition, meta_extra=None):
    d = ck.checkpoint_dir(run_dir, epoch)
    for lo, hi in partition:
        ck.save_shard(d, {i: states[i] for i in range(lo, hi + 1)})
    meta = {"epoch": epoch, "step": 100 * epoch, "num_blocks": len(states), "fingerprint": FINGERPRINT}
    ck.write_manifest(d, {**meta, **(meta_extra or {})})
    return d


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_checkpoint_dir_name(tmp_path):
    assert ck.checkpoint_dir(tmp_path, 7) == tmp_path / "checkpoints" / "epoch-0007"


def test_round_trip_restores_module_and_adam_exactly(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    x = torch.randn(4, 5)
    for _ in range(3):
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        opt.step()
    d = ck.checkpoint_dir(tmp_path, 3)
    shard = ck.save_shard(d, {0: {"module": lin.state_dict(), "optim": opt.state_dict()}})
    assert shard.name == "blocks-000-000.pt"
    ck.write_manifest(d, {"epoch": 3, "step": 30, "num_blocks": 1, "fingerprint": FINGERPRINT})

    manifest, blocks = ck.load_checkpoint(d, FINGERPRINT)
    assert manifest["epoch"] == 3 and manifest["step"] == 30 and manifest["shards"] == ["blocks-000-000.pt"]
    lin2 = torch.nn.Linear(5, 3)
    opt2 = torch.optim.Adam(lin2.parameters(), lr=1e-2)
    lin2.load_state_dict(blocks[0]["module"])
    opt2.load_state_dict(blocks[0]["optim"])
    for model, o in ((lin, opt), (lin2, opt2)):
        o.zero_grad()
        model(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(lin.weight, lin2.weight) and torch.equal(lin.bias, lin2.bias)


@pytest.mark.parametrize(
    "partition", [[(0, 3)], [(0, 1), (2, 3)], [(0, 0), (1, 3)], [(0, 0), (1, 1), (2, 2), (3, 3)]]
)
def test_any_partition_loads_into_the_same_dict(tmp_path, partition):
    states = {i: _block_state(i) for i in range(4)}
    reference = _save(tmp_path / "ref", 1, states, [(0, 3)])
    d = _save(tmp_path / "run", 1, states, partition)
    assert len(list(d.glob("blocks-*.pt"))) == len(partition)
    _, ref_blocks = ck.load_checkpoint(reference)
    _, blocks = ck.load_checkpoint(d)
    assert list(blocks) == [0, 1, 2, 3]
    _assert_same(ref_blocks, blocks)


def test_resaving_an_epoch_with_another_partition_replaces_stale_shards(tmp_path):
    states = {i: _block_state(i) for i in range(4)}
    d = _save(tmp_path, 2, states, [(0, 1), (2, 3)])
    ck.save_shard(d, {0: states[0]})
    assert not (d / ck.MANIFEST).exists(), "a re-save must make the directory incomplete until it finishes"
    assert ck.latest_checkpoint(tmp_path) is None
    ck.save_shard(d, {i: states[i] for i in (1, 2, 3)})
    ck.write_manifest(d, {"epoch": 2, "num_blocks": 4})
    assert sorted(p.name for p in d.glob("*.pt")) == ["blocks-000-000.pt", "blocks-001-003.pt"]
    _assert_same(ck.load_checkpoint(d)[1], states)


def test_write_manifest_refuses_a_checkpoint_with_missing_blocks(tmp_path):
    d = ck.checkpoint_dir(tmp_path, 1)
    ck.save_shard(d, {0: {"w": torch.zeros(1)}})
    with pytest.raises(ValueError, match="no shard holds block"):
        ck.write_manifest(d, {"epoch": 1, "num_blocks": 2})
    assert not (d / ck.MANIFEST).exists()


def test_save_shard_rejects_non_contiguous_blocks(tmp_path):
    with pytest.raises(ValueError, match="contiguous"):
        ck.save_shard(tmp_path, {0: {}, 2: {}})


def test_atomic_write_failed_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    ck.atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_torch_save_failing_mid_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "blocks-000-000.pt"
    ck.atomic_torch_save({"blocks": {0: {"w": torch.ones(3)}}}, target)
    real_save = torch.save

    def half_save(obj, f):
        real_save(obj, f)
        f.seek(0)
        f.truncate(10)
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(ck.torch, "save", half_save)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        ck.atomic_torch_save({"blocks": {0: {"w": torch.zeros(3)}}}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks-000-000.pt"]
    loaded = torch.load(target, weights_only=True)
    assert torch.equal(loaded["blocks"][0]["w"], torch.ones(3))


def test_incomplete_checkpoint_is_ignored(tmp_path):
    states = {0: _block_state(0)}
    first = _save(tmp_path, 1, states, [(0, 0)])
    unfinished = ck.checkpoint_dir(tmp_path, 2)
    ck.save_shard(unfinished, states)
    assert ck.latest_checkpoint(tmp_path) == first
    assert ck.resolve_checkpoint(tmp_path) == first
    assert ck.resolve_checkpoint(first) == first
    with pytest.raises(FFPipeError, match="incomplete"):
        ck.resolve_checkpoint(unfinished)
    with pytest.raises(FFPipeError, match="no manifest.json"):
        ck.load_checkpoint(unfinished)


def test_latest_orders_by_epoch_number_and_none_when_empty(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None
    with pytest.raises(FFPipeError, match="no complete checkpoint"):
        ck.resolve_checkpoint(tmp_path)
    with pytest.raises(FFPipeError, match="does not exist"):
        ck.resolve_checkpoint(tmp_path / "nope")
    states = {0: {"w": torch.zeros(1)}}
    for epoch in (9, 10, 2):
        _save(tmp_path, epoch, states, [(0, 0)])
    assert ck.latest_checkpoint(tmp_path).name == "epoch-0010"


def test_fingerprint_mismatch_names_first_differing_key(tmp_path):
    d = _save(tmp_path, 1, {0: {"w": torch.zeros(1)}}, [(0, 0)])
    other = {"model": {"width": 64, "depth": 4, "kernel": (3, 3)}, "dataset": "mnist"}
    with pytest.raises(FFPipeError) as err:
        ck.load_checkpoint(d, other)
    msg = str(err.value)
    assert msg.startswith("checkpoint is for a different architecture: model.width 32 != 64")
    assert "\n" not in msg
    with pytest.raises(FFPipeError, match=r"model\.depth 4 != <missing>"):
        ck.load_checkpoint(d, {"model": {"width": 32, "kernel": [3, 3]}, "dataset": "mnist"})
    with pytest.raises(FFPipeError, match=r"heads <missing> != 2"):
        ck.load_checkpoint(d, {**FINGERPRINT, "heads": 2})
    as_lists = {"model": {"width": 32, "depth": 4, "kernel": [3, 3]}, "dataset": "mnist"}
    manifest, _ = ck.load_checkpoint(d, as_lists)
    assert manifest["fingerprint"]["model"]["kernel"] == [3, 3]


def test_corrupt_shard_is_one_line_error(tmp_path):
    d = _save(tmp_path, 1, {i: _block_state(i) for i in range(2)}, [(0, 0), (1, 1)])
    shard = d / "blocks-001-001.pt"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(FFPipeError, match="cannot load checkpoint shard .*blocks-001-001.pt") as err:
        ck.load_checkpoint(d)
    assert "\n" not in str(err.value)


def test_missing_shard_and_bad_manifest_are_errors(tmp_path):
    d = _save(tmp_path, 1, {i: {"w": torch.zeros(1)} for i in range(2)}, [(0, 0), (1, 1)])
    (d / "blocks-001-001.pt").unlink()
    with pytest.raises(FFPipeError, match="blocks-001-001.pt is missing"):
        ck.load_checkpoint(d)
    (d / ck.MANIFEST).write_text("{not json")
    with pytest.raises(FFPipeError, match="cannot read .*manifest.json"):
        ck.load_checkpoint(d)


def test_shard_whose_content_disagrees_with_its_name_is_refused(tmp_path):
    d = _save(tmp_path, 1, {i: {"w": torch.zeros(1)} for i in range(2)}, [(0, 1)])
    torch.save({"blocks": {0: {"w": torch.zeros(1)}}}, d / "blocks-000-001.pt")
    with pytest.raises(FFPipeError, match="does not hold blocks 0..1"):
        ck.load_checkpoint(d)


_EXECUTED = []


def _mark(tag):
    _EXECUTED.append(tag)


class Payload:
    """Stands in for a malicious object: unpickling it calls a function of the attacker's choice."""

    def __reduce__(self):
        return (_mark, ("ran",))


def test_pickle_with_arbitrary_class_is_refused(tmp_path):
    d = _save(tmp_path, 1, {0: {"w": torch.zeros(1)}}, [(0, 0)])
    shard = d / "blocks-000-000.pt"
    torch.save({"blocks": {0: {"w": torch.zeros(1), "extra": Payload()}}}, shard)
    torch.load(shard, weights_only=False)  # the unsafe load really would run the payload ...
    assert _EXECUTED == ["ran"]
    _EXECUTED.clear()
    with pytest.raises(FFPipeError, match=r"refused to unpickle .*_mark") as err:
        ck.load_checkpoint(d)
    assert "\n" not in str(err.value)
    assert _EXECUTED == []  # ... and load_checkpoint refused before running it


def test_prune_keeps_newest_and_removes_stale_incomplete(tmp_path):
    states = {0: {"w": torch.zeros(1)}}
    for epoch in (1, 2, 3, 4):
        _save(tmp_path, epoch, states, [(0, 0)])
    ck.save_shard(ck.checkpoint_dir(tmp_path, 0), states)  # crashed early save
    ck.save_shard(ck.checkpoint_dir(tmp_path, 5), states)  # save in progress
    ck.prune_checkpoints(tmp_path, keep=2)
    remaining = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert remaining == ["epoch-0003", "epoch-0004", "epoch-0005"]
    ck.prune_checkpoints(tmp_path, keep=1)
    assert ck.latest_checkpoint(tmp_path).name == "epoch-0004"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0004", "epoch-0005"]
    with pytest.raises(FFPipeError, match="keep must be >= 1"):
        ck.prune_checkpoints(tmp_path, keep=0)


def test_manifest_is_json_with_metadata(tmp_path):
    d = _save(tmp_path, 1, {0: {"w": torch.zeros(1)}}, [(0, 0)], {"config": {"lr": 5e-5}})
    meta = json.loads((d / ck.MANIFEST).read_text())
    assert meta["config"] == {"lr": 5e-5} and meta["num_blocks"] == 1
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    ck.atomic_write_bytes(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode
