"""The BP baseline's gradient accumulation (`train.micro_batches`): the one-batch step up to float summation
order, the plain step bitwise at 1, a clear error for a non-divisor, and less peak tensor memory."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import ffpipe.baselines.ddp as ddp
from ffpipe.baselines import build_bp_model, train_bp
from ffpipe.baselines.model import micro_batch_rows, train_step
from ffpipe.config import load_config
from ffpipe.errors import FFPipeError
from ffpipe.run.measure import MemoryMeter
from ffpipe.run.records import read_records

CONV = ["model.type=conv", "model.depth=3", "model.width=16", "model.kernel=3", "model.pool=[2,2,0]"]
BATCH = 64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained(micro_batches: int, steps: int = 3, extra: tuple[str, ...] = ()):
    """The BP twin of a 3-block CNN after `steps` SGD steps (momentum 0.9) on fixed random batches. SGD, not
    Adam: Adam divides by the gradient's running scale, so a loss scaled wrongly by a constant (a micro-batch
    mean not weighted by b/B: 4x the gradient) would go unseen."""
    cfg = load_config(None, [*CONV, *extra])
    model = build_bp_model(cfg, (1, 28, 28), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    out = []
    for step in range(steps):
        x, y = torch.rand(BATCH, 1, 28, 28, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
        model.set_step(step + 1)
        out.append(train_step(model, opt, x, y, contextlib.nullcontext, micro_batches))
    return model, out


def test_four_micro_batches_take_the_one_batch_step():
    """Not bitwise: each micro-batch sums its rows' gradients, then the four partial sums are added, where
    one batch sums all 64 rows at once; float addition is not associative. Observed max |Δw| after 3 steps
    1.4e-7 (weights up to 0.34), so rtol 1e-5 / atol 1e-6 leaves a 30x margin and still fails on a wrong
    scale (checked: dropping the × b/B factor fails here) or a dropped row."""
    one, one_out = trained(1)
    four, four_out = trained(4)
    start = build_bp_model(load_config(None, CONV), (1, 28, 28), 10).state_dict()
    for name, weight in one.state_dict().items():
        assert not torch.equal(weight, start[name]) or name.endswith("num_batches_tracked"), name
        torch.testing.assert_close(four.state_dict()[name], weight, rtol=1e-5, atol=1e-6)
    for (loss1, correct1), (loss4, correct4) in zip(one_out, four_out):
        torch.testing.assert_close(loss4, loss1, rtol=1e-5, atol=1e-6)
        assert int(correct4) == int(correct1)


def test_one_micro_batch_is_the_plain_step_bitwise():
    """m = 1 multiplies the mean cross-entropy by exactly 1.0: the step is the baseline's old one, bit for bit."""
    model, _ = trained(1, steps=2)
    cfg = load_config(None, CONV)
    ref = build_bp_model(cfg, (1, 28, 28), 10)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        x, y = torch.rand(BATCH, 1, 28, 28, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
        ref.set_step(step + 1)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x).float(), y).backward()
        opt.step()
    for name, weight in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name


def test_dropout_masks_differ_with_micro_batches():
    """The documented limit: a mask depends on (seed, step) and its size, so four micro-batches share one
    16-row pattern instead of covering the 64 rows of the one-batch mask; the steps then differ (while two
    runs with the same micro-batches stay bitwise equal: nothing else is random)."""
    dropout = ("model.dropout=0.3",)
    one, _ = trained(1, extra=dropout)
    four, _ = trained(4, extra=dropout)
    again, _ = trained(4, extra=dropout)
    name = "blocks.0.layer.weight"
    assert torch.equal(four.state_dict()[name], again.state_dict()[name])
    assert not torch.allclose(four.state_dict()[name], one.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_micro_batches_must_divide_the_rank_rows(tmp_path):
    assert micro_batch_rows(64, 4) == 16 and micro_batch_rows(50, 1) == 50
    with pytest.raises(FFPipeError, match="train.micro_batches 3 does not divide the 100 rows") as err:
        micro_batch_rows(100, 3)
    assert "\n" not in str(err.value)
    cfg = load_config(None, ["model.type=linear", "model.depth=1", "train.micro_batches=3", "train.progress=false"])
    with pytest.raises(FFPipeError, match="train.micro_batches 3 does not divide the 100 rows"):
        train_bp(cfg, str(tmp_path / "run"))  # refused before the first step
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "epoch" not in (
        tmp_path / "run" / "metrics.jsonl").read_text()


def test_accumulation_shrinks_the_peak_tensor_bytes():
    """The point of it: the activations (and autograd graph) of one micro-batch at a time. The fixed part
    (parameters, gradients, momentum, the batch) is the same for both; the rest of the peak must shrink by
    about the factor 4 (observed 3.98 for this CNN; 3 to 5 allowed). Keeping every micro-batch's graph alive
    would leave it ~1."""
    readings = {}
    for m in (1, 4):
        model, _ = trained(m, steps=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x, y = torch.rand(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
        train_step(model, opt, x, y, contextlib.nullcontext, m)  # the momentum buffers exist from here on
        meter = MemoryMeter(torch.device("cpu"))
        with meter.step(model, opt, x, y):
            train_step(model, opt, x, y, contextlib.nullcontext, m)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        readings[m] = meter.read()["peak_tensor_bytes"] - (3 * params + x.nbytes + y.nbytes)
    assert 3 <= readings[1] / readings[4] <= 5, readings


def test_the_runner_steps_with_its_micro_batches(tmp_path, monkeypatch):
    """`BPRunner` hands `train.micro_batches` to every step (equal weights alone would not show it: the
    accumulated step is the plain one) and records it."""
    seen = []

    def spy(*args):
        seen.append(args[5])
        return train_step(*args)

    monkeypatch.setattr(ddp, "train_step", spy)
    cfg = load_config(None, ["model.type=linear", "model.depth=1", "train.micro_batches=4", "train.max_steps=3",
                             "train.progress=false", "train.tensor_memory=true"])
    train_bp(cfg, str(tmp_path / "run"))
    assert seen == [4, 4, 4]
    epoch = next(r for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch")
    assert epoch["micro_batches"] == 4 and epoch["peak_tensor_bytes"] > 0
