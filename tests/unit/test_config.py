"""Typed configs: every error class is one `ffpipe: error:` line, and good configs load as written."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffpipe.config import dump_config, load_config
from ffpipe.data.loading import shape_for_config
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import block_specs
from ffpipe.run.sequential import SequentialRunner

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_config_loads_and_its_blocks_chain():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert len(block_specs(cfg.model, shape_for_config(cfg.data))) == cfg.model.depth, path


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*_cpu.yaml")), ids=lambda p: p.stem)
def test_cpu_configs_train_a_step_on_the_embedded_slice(path, tmp_path):
    """The CPU-sized configs promise to run on the slice: one real step through every block, finite losses."""
    cfg = load_config(path, ["data.name=fashion_mnist_small", "data.batch_size=8", "pipeline.stages=1"])
    runner = SequentialRunner(cfg)
    runner.start(tmp_path, resume=False)
    runner.set_epoch(1)
    done = runner.train_step(1, next(iter(runner.batches(1, 0))))
    assert torch.isfinite(done.loss)


def test_overrides_parse_as_yaml():
    cfg = load_config(None, ["model.width=[8,8,8]", "optim.lr=1e-3", "pipeline.stages=2",
                             "pipeline.partition=[2,1]", "data.dir=/tmp/x"])
    assert cfg.model.width == [8, 8, 8] and cfg.optim.lr == 1e-3
    assert cfg.pipeline.partition == [2, 1] and cfg.data.dir == "/tmp/x"


def test_int_is_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.widht=3", "unknown key 'model.widht'; did you mean 'width'?"),
    ("modle.width=3", "unknown key 'modle'; did you mean 'model'?"),
])
def test_unknown_key_did_you_mean(override, message):
    with pytest.raises(FFPipeError, match=message.replace("?", r"\?").replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["model.width=abc", "train.epochs=true", "train.epochs=2.5",
                                      "head.readouts=linear", "model=3"])
def test_wrong_type(override):
    with pytest.raises(FFPipeError, match="expected"):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["optim.lr=-1", "data.batch_size=0", "model.depth=0",
                                      "data.labels.k=1.5", "loss.family=bcee"])
def test_out_of_range(override):
    with pytest.raises(FFPipeError):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, fragment", [
    (["pipeline.stages=9"], "cannot split"),
    (["pipeline.stages=2", "pipeline.partition=[3,3]"], "must give each"),
    (["model.width=[8,8]"], "has 2 entries"),
    (["loss.family=group_ce"], "group_ce takes the plain image"),
    (["data.labels.encoding=none"], "only works with loss.family group_ce"),
    (["model.type=linear", "model.pool=2"], "pooling needs"),
    (["optim.schedule=multistep"], "milestone"),
    (["head.mode=none"], "needs head.mode"),
])
def test_impossible_combinations(overrides, fragment):
    with pytest.raises(FFPipeError, match=fragment):
        load_config(None, overrides)


def test_wire_dtype_is_one_of_its_words():
    assert load_config(None, []).pipeline.wire_dtype == "float32"
    assert load_config(None, ["pipeline.wire_dtype=bfloat16"]).pipeline.wire_dtype == "bfloat16"
    with pytest.raises(FFPipeError) as info:
        load_config(None, ["pipeline.wire_dtype=float16"])
    assert str(info.value).splitlines() == ["config pipeline.wire_dtype: 'float16' is not one of float32, bfloat16; "
                                            "did you mean 'bfloat16'?"]


def test_bad_files(tmp_path):
    with pytest.raises(FFPipeError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(FFPipeError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(FFPipeError, match="mapping"):
        load_config(scalar)


def test_dump_round_trip(tmp_path):
    cfg = load_config(ROOT / "configs" / "default.yaml", ["optim.lr=0.5"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_cli_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ffpipe.cli", "train", "--set", "model.widht=3",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["ffpipe: error: config: unknown key 'model.widht'; "
                                                  "did you mean 'width'?"]
    assert "Traceback" not in result.stderr


def test_a_retired_field_loads_only_with_the_value_it_always_had(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  labels: {negatives: random, encoding: onehot}\n")
    assert load_config(old).data.labels.encoding == "onehot"
    old.write_text("data:\n  labels: {negatives: hard}\n")
    with pytest.raises(FFPipeError, match="unknown key 'data.labels.negatives'"):
        load_config(old)


def test_group_ce_widths_that_do_not_split_into_class_groups_fail_at_load():
    group = ["loss.family=group_ce", "data.labels.encoding=none", "head.readouts=[group]", "head.mode=none",
             "model.depth=2"]
    with pytest.raises(FFPipeError, match=r"model.width: .* multiple of 10; got \[32\]"):
        load_config(None, group + ["model.width=[20,32]"])
    assert load_config(None, group + ["model.width=[20,40]"]).model.width == [20, 40]
