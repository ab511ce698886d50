"""The pipeline proof, with real processes: a P-stage pipeline ends with the sequential trainer's weights.

Each pipelined run here is `ffpipe train --stages P`, which starts P real processes through torchrun
(standalone, gloo on 127.0.0.1) that exchange activations with torch.distributed P2P.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffpipe.run.checkpoint import diff_checkpoints, latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MLP = """\
data: {batch_size: 50, labels: {encoding: onehot}}
model: {type: linear, depth: 4, width: 48}
head: {mode: %s}
train: {epochs: 1, progress: false}
"""


def ffpipe(*args, cwd=ROOT, timeout=240, env=None):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ffpipe.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=full_env)


def config(tmp_path, head="local"):
    path = tmp_path / f"mlp-{head}.yaml"
    path.write_text(MLP % head)
    return str(path)


def train(cfg, out, *extra, env=None):
    result = ffpipe("train", "--config", cfg, "--out", str(out), *extra, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    base = tmp_path_factory.mktemp("seq")
    runs = {}
    for head in ("local", "joint"):
        cfg = config(base, head)
        runs[head] = (cfg, train(cfg, base / head, "--stages", "1", "--max-steps", "40"))
    return runs


@pytest.mark.parametrize("stages, partition", [(2, "[2,2]"), (4, "[1,1,1,1]")])  # P = 3: the residual net's
def test_pipeline_equals_sequential_bitwise_local_head(sequential, tmp_path, stages, partition):
    cfg, seq = sequential["local"]
    run = train(cfg, tmp_path / "pipe", "--stages", str(stages), "--set", f"pipeline.partition={partition}",
                "--max-steps", "40")
    diff = diff_checkpoints(seq, run)
    assert diff["identical"], diff
    assert all(row["head"]["identical"] for row in diff["blocks"] if "head" in row), diff
    manifest, blocks = load_checkpoint(latest_checkpoint(run))
    assert manifest["stages"] == stages and manifest["step"] == 40 and sorted(blocks) == [0, 1, 2, 3]


def test_pipeline_joint_head_blocks_bitwise_accuracy_close(sequential, tmp_path):
    """Stage 0 owns head slices (block 1), so the head's error crosses back; under NCCL's pair semantics
    (`FFPIPE_EMULATE_NCCL`), where sharing the activations' process group would deadlock at step 1."""
    cfg, seq = sequential["joint"]
    run = train(cfg, tmp_path / "pipe", "--stages", "2", "--set", "pipeline.partition=[2,2]", "--max-steps", "40",
                env={"FFPIPE_EMULATE_NCCL": "1"})
    assert diff_checkpoints(seq, run)["identical"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seq_records = [json.loads(line) for line in (seq / "metrics.jsonl").read_text().splitlines()]
    pipe_val, seq_val = records[0]["val"]["linear"], seq_records[0]["val"]["linear"]
    assert abs(pipe_val - seq_val) <= 0.02, (pipe_val, seq_val)
    stages = records[0]["stages"]
    assert len(stages) == 2 and records[0]["bottleneck"]["bound_samples_per_s"] > 0
    assert stages[1]["bytes_in"] > 0 and stages[0]["bytes_out"] == stages[1]["bytes_in"]


def test_resume_with_a_different_number_of_stages(sequential, tmp_path):
    """Save with 3 stages at step 20, resume with 2: the same weights as the uninterrupted 1-stage run. (A
    checkpoint loading into the sequential trainer's other partitions: `test_trainer`.)"""
    cfg, seq = sequential["local"]
    run = tmp_path / "run"
    train(cfg, run, "--stages", "3", "--max-steps", "20")
    train(cfg, run, "--stages", "2", "--max-steps", "40", "--resume")
    assert diff_checkpoints(seq, run)["identical"]


def test_a_failing_stage_stops_everything_with_one_line(tmp_path):
    cfg = config(tmp_path)
    result = ffpipe("train", "--config", cfg, "--out", str(tmp_path / "run"), "--stages", "3",
                    "--max-steps", "40", env={"FFPIPE_FAULT": "1:7"}, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("ffpipe: error:")]
    assert lines == ["ffpipe: error: stage 1: RuntimeError: injected fault (FFPIPE_FAULT) at step 7"], result.stderr


def test_two_stages_times_two_replicas_match_sequential_at_the_global_batch(sequential, tmp_path):
    """P=2, R=2: each replica takes half of every global batch of 50 and the replicas of a stage average their
    gradients; only the float summation order differs from sequential training at batch 50."""
    cfg, seq = sequential["local"]
    run = train(cfg, tmp_path / "dp", "--stages", "2", "--replicas", "2", "--max-steps", "40")
    diff = diff_checkpoints(seq, run)
    assert max(row["block"]["max_abs_diff"] for row in diff["blocks"]) < 1e-5, diff
    assert max(row["head"]["max_abs_diff"] for row in diff["blocks"] if "head" in row) < 1e-5, diff


RESIDUAL = """\
data: {batch_size: 50, labels: {encoding: none}}
model: {type: conv, depth: 6, width: [10, 10, 10, 20, 20, 20], kernel: 3, stride: [1, 1, 1, 2, 1, 1],
        shortcuts: [[0, 2, add], [2, 4, concat], [3, 5, add]], norm: group, input_norm: layer, bias: false,
        init: kaiming, dropout: 0.2}
loss: {family: group_ce, group_goodness: mean}
optim: {name: adamw, lr: 0.003, weight_decay: 0.0005}
head: {mode: none, readouts: [group]}
train: {epochs: 1, progress: false}
"""


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    base = tmp_path_factory.mktemp("residual")
    cfg = base / "residual.yaml"
    cfg.write_text(RESIDUAL)
    return str(cfg), train(str(cfg), base / "seq", "--stages", "1", "--max-steps", "12")


def test_residual_pipeline_equals_sequential_bitwise_under_nccl_pair_semantics(residual, tmp_path):
    """Shortcut tensors cross every boundary of [2,2,2] (block 0 -> 2, 2 -> 4, 3 -> 5) in the packet (P = 2
    with [3,3]: the resume test below ends there, on the same weights; P = 4: the MLP above), and dropout
    (DeeperForward's 0.2) draws the same masks whatever the partition. The run is under NCCL's pair semantics
    (`FFPIPE_EMULATE_NCCL`, `ffpipe.pipeline.wire`), where the same schedule must neither deadlock nor change
    a bit."""
    cfg, seq = residual
    run = train(cfg, tmp_path / "pipe", "--stages", "3", "--set", "pipeline.partition=[2,2,2]", "--max-steps", "12",
                env={"FFPIPE_EMULATE_NCCL": "1"})
    assert diff_checkpoints(seq, run)["identical"]


def test_residual_resume_with_another_partition(residual, tmp_path):
    cfg, seq = residual
    run = tmp_path / "run"
    train(cfg, run, "--stages", "3", "--set", "pipeline.partition=[2,2,2]", "--max-steps", "6")
    train(cfg, run, "--stages", "2", "--set", "pipeline.partition=[3,3]", "--max-steps", "12", "--resume")
    assert diff_checkpoints(seq, run)["identical"]


BFLOAT16_WIRE = ("--set", "pipeline.wire_dtype=bfloat16")


def validation(run):
    """The first record's validation readouts, without their timings."""
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return {k: v for k, v in record["val"].items() if k != "infer_ms_per_image"}


def test_bfloat16_wire_pipeline_equals_sequential_bitwise(residual, tmp_path):
    """`pipeline.wire_dtype: bfloat16` rounds the packet at every boundary: x and the shortcut tensors in flight
    (blocks 0 -> 2 and 2 -> 4 cross [2,2,2]'s boundaries; at batch 50 they travel as separate bfloat16 tensors,
    too large for the envelope). The sequential runner of the same partition rounds at the same places,
    training and evaluation packets alike, so weights and readouts stay bitwise equal, and differ from the
    float32 run's."""
    cfg, float32 = residual
    args = ("--stages", "3", "--set", "pipeline.partition=[2,2,2]", *BFLOAT16_WIRE, "--max-steps", "12")
    seq = train(cfg, tmp_path / "seq", *args, "--sequential")
    run = train(cfg, tmp_path / "pipe", *args)
    assert diff_checkpoints(seq, run)["identical"]
    assert validation(seq) == validation(run)
    assert not diff_checkpoints(float32, run)["identical"]
