"""`MemoryMeter`'s peak of live tensor bytes: a known allocation sequence, the event replay, the one sampled
step per epoch, a training step between bounds derived from its tensors, and every FF/BP runner's record."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.baselines import train_bp
from ffpipe.config import load_config
from ffpipe.run.measure import DeviceTimer, MemoryMeter, peak_of_events, peak_rss_bytes
from ffpipe.run.records import read_records
from ffpipe.run.sequential import train

MiB = 1 << 20
FLOATS_PER_MiB = MiB // 4
SLACK = 4096
"""Tolerance of the known sequence: only the test's own tensors are allocated in the window, so the reading
is expected exact; 4 KiB leaves room for a stray scalar tensor torch might make, and is 512x smaller than the
2 MiB that separates the right answer from the nearest wrong one."""

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_peak_of_a_known_sequence_of_allocations(device):
    """1 MiB alive at the start (a root), then +4, +8, −4, +2 MiB: the peak is 1 + 12 MiB. Wrong counters
    read otherwise: ignoring frees 15, the live bytes at the end 11, ignoring the roots 12, summing the
    frees' sizes wrongly (as allocations) above 13."""
    meter = MemoryMeter(torch.device(device))
    alive = torch.ones(FLOATS_PER_MiB, device=device)
    with meter.step(alive):
        a = torch.ones(4 * FLOATS_PER_MiB, device=device)
        b = torch.ones(8 * FLOATS_PER_MiB, device=device)
        del a
        c = torch.ones(2 * FLOATS_PER_MiB, device=device)
    assert abs(meter.read()["peak_tensor_bytes"] - 13 * MiB) <= SLACK, meter.read()
    del b, c


def test_event_replay_counts_only_frees_it_saw_allocated():
    """A free of an address allocated before the window (size unknown to the window) is not subtracted: that
    tensor was never added. An address reused without its free seen replaces the old size."""
    events = [(1, 100), (2, 50), (9, -1000), (1, -100), (3, 30), (3, 40)]
    assert peak_of_events(events) == 150
    assert peak_of_events([(1, 100), (1, -100), (2, 60), (1, 70)]) == 130
    assert peak_of_events([(9, -500)]) == 0


def test_only_the_sampled_step_is_measured():
    """Steps after the epoch's sample run without the profiler; `new_epoch` makes the next one the sample,
    and the figure is the largest sample so far."""
    meter = MemoryMeter(torch.device("cpu"))
    with meter.step():
        small = torch.ones(FLOATS_PER_MiB)
    first = meter.read()["peak_tensor_bytes"]
    with meter.step():
        big = torch.ones(8 * FLOATS_PER_MiB)
    assert meter.read()["peak_tensor_bytes"] == first
    meter.new_epoch()
    with meter.step():
        bigger = torch.ones(16 * FLOATS_PER_MiB)
    assert abs(meter.read()["peak_tensor_bytes"] - 16 * MiB) <= SLACK
    meter.new_epoch()
    with meter.step():
        smaller = torch.ones(FLOATS_PER_MiB)
    assert abs(meter.read()["peak_tensor_bytes"] - 16 * MiB) <= SLACK  # the largest so far
    del small, big, bigger, smaller


def test_a_training_step_reads_between_its_bounds():
    """One SGD step (no optimizer state) of Linear(512, 1024) → ReLU → Linear(1024, 10) on a batch of 64,
    after an earlier step left gradients behind, which this step frees (set_to_none) and makes anew.

    Lower bound: at the end of the backward the parameters, all their new gradients and the batch are alive
    at once. Upper bound: that plus the hidden-sized activations that can be alive together (the ReLU's
    output, the gradient reaching it, the gradient of its input: 3 × 64 × 1024 floats) and 64 KiB for the
    class-sized ones (logits, log-softmax and their gradients: 2.5 KiB each). A counter that ignored frees
    would also hold the pre-activation and its gradient (+ 512 KiB); one that counted the old gradients as
    alive and the new ones as allocated would read a gradient set (2 MiB) more; one without the roots, the
    parameters (2 MiB) less. Peak RSS is no tighter bound: the allocator reuses freed pages, so RSS need not
    grow by what a step allocates; it must only exceed the reading, as every counted tensor is written, so
    resident, at the peak."""
    torch.manual_seed(0)
    batch, hidden = 64, 1024
    net = nn.Sequential(nn.Linear(512, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(batch, 512), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    meter = MemoryMeter(torch.device("cpu"))
    with meter.step(net, opt, x, y):
        step()
    reading = meter.read()["peak_tensor_bytes"]
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    lower = 2 * params + x.nbytes + y.nbytes
    upper = lower + 3 * batch * hidden * 4 + 64 * 1024
    assert lower <= reading <= upper, (lower, reading, upper)
    assert reading <= peak_rss_bytes()


def test_every_runner_records_its_peak_tensor_bytes(tmp_path):
    """The sequential FF runner and the BP runner write `peak_tensor_bytes` into each epoch record, at least
    the bytes of the network's parameters (FF: the blocks and head slices, which its roots reach), and the
    run's CPU seconds so far, which grow from epoch to epoch."""
    overrides = ["model.type=linear", "model.depth=2", "model.width=64", "data.batch_size=50",
                 "data.labels.encoding=onehot", "data.train_subset=500", "train.progress=false", "train.epochs=2",
                 "train.tensor_memory=true"]
    cfg = load_config(None, overrides)
    train(cfg, out=str(tmp_path / "ff"))
    bp = train_bp(load_config(None, overrides), str(tmp_path / "bp"))
    params = (784 * 64 + 64 + 64 * 64 + 64) * 4
    for run in ("ff", "bp"):
        epochs = [r for r in read_records(tmp_path / run / "metrics.jsonl") if r["kind"] == "epoch"]
        assert [r["step"] for r in epochs] == [10, 20], run
        for record in epochs:
            assert params <= record["peak_tensor_bytes"] <= record["peak_memory_bytes"], (run, record)
        assert 0 < epochs[0]["cpu_s"] < epochs[1]["cpu_s"], run  # cumulative CPU seconds of the run
    assert bp["step"] == 20


def test_the_timer_sums_spans_per_key_and_starts_over_at_reset():
    """Spans of work summed per key; what happens between spans (a wait) is not in any sum."""
    timer = DeviceTimer(torch.device("cpu"))
    a = torch.randn(300, 300)
    for _ in range(3):
        start = timer.mark()
        a @ a
        timer.add("work", start)
        start = timer.mark()
        timer.add("nothing", start)
    totals = timer.totals()
    assert set(totals) == {"work", "nothing"} and totals["work"] > totals["nothing"] >= 0
    timer.reset()
    assert timer.totals() == {}
