"""Time to accuracy: wall time for FF pipeline and DDP-BP to reach stated validation accuracies (issues 5, 14).

Throughput alone flatters FF: an FF step can be cheaper than a BP step, but FF needs more epochs to learn the
same accuracy. So on one config the FF pipeline with N stages and DDP-BP with N workers each train for `epochs`
epochs, evaluating on the validation split after every epoch, and we report for each target the first epoch
whose validation accuracy reaches it and the cumulative *training* wall time up to that epoch (the sum of the
epoch records' `train_s`: start-up and the evaluations themselves are left out, for both methods alike), and
each method's validation accuracy after the same training time (the shorter of the two runs). The headline
(`ff_over_ddp_time`) is the time to the *higher* target. A target not reached within the epochs is reported as
not reached, never extrapolated.

TTA is the deep group-goodness setting of issue 14 (a DeeperForward net on the full Fashion-MNIST, FF read
through the group goodness of all its blocks, BP through its own class-group classifier); TTA_MLP is issue 5's
wide MLP on the embedded slice.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ffpipe.data.catalog import get_spec
from ffpipe.lab.bench import runner
from ffpipe.lab.bench.models import TRAIN_IMAGES, Size, attempt, config_text

TTA_MLP = {"model": "mlp", "width": 1000, "batch": 100, "epochs": 20, "targets": [0.75, 0.80], "dataset": None,
           "readouts": {"ff_pipeline": "linear", "ddp_bp": "bp"}}
"""4x1000 (our choice): wide enough that the all-reduce matters, small enough that 2 x 20 epochs take about
2 minutes on 2 cores. Measured here (FF sequential, the pipeline's arithmetic): FF 4x1000 first reached 0.75 at
epoch 8 and 0.80 only at epoch 20 (0.827), its validation accuracy swinging by up to 0.05 between epochs; BP
4x500 reached 0.75 in epoch 1 and 0.80 in epoch 4."""
TTA = {"model": "tinycnn", "width": 20, "batch": 128, "epochs": 6, "targets": [0.88, 0.90],
       "dataset": "fashion_mnist", "readouts": {"ff_pipeline": "group", "ddp_bp": "bp"}}
"""The CPU-sized TinyCNN (fashion_mnist_tinycnn_cpu.yaml's net) on the full Fashion-MNIST (our choice: the
deepest net whose two 6-epoch runs fit this benchmark's budget on 2 cores)."""
TTA_QUICK = {**TTA_MLP, "width": 100, "batch": 500, "epochs": 2}
"""`--quick --tta`: the same procedure on a tiny MLP, a smoke test of the code path (its accuracies mean nothing)."""


def curve(out: Path, readout: str) -> list[dict]:
    """Per epoch: validation accuracy of `readout`, training seconds, and their running sum."""
    points, total = [], 0.0
    for epoch, rec in sorted(runner.epoch_records(out).items()):
        total += rec["train_s"]
        points.append({"epoch": epoch, "val": rec["val"][readout], "train_s": rec["train_s"], "cum_train_s": total})
    return points


def reached(points: list[dict], target: float) -> dict:
    """The first epoch at or above `target` and the training time to it, or reached False."""
    hit = next((p for p in points if p["val"] >= target), None)
    return {"target": target, "reached": hit is not None, "epoch": hit["epoch"] if hit else None,
            "train_s": hit["cum_train_s"] if hit else None}


def accuracy_at(points: list[dict], seconds: float) -> float | None:
    """Validation accuracy of the last epoch finished within `seconds` of training (None: not one)."""
    done = [p for p in points if p["cum_train_s"] <= seconds * (1 + 1e-9)]
    return done[-1]["val"] if done else None


def tta_summary(methods: dict, target: float) -> dict:
    """The headline: each method's epoch and seconds to `target`, FF's time over BP's, and each one's
    accuracy after the shorter run's training time."""
    first = {m: next(r for r in v["reached"] if r["target"] == target) for m, v in methods.items()}
    ff, bp = first.get("ff_pipeline"), first.get("ddp_bp")
    ratio = ff["train_s"] / bp["train_s"] if ff and bp and ff["reached"] and bp["reached"] else None
    same = min(v["curve"][-1]["cum_train_s"] for v in methods.values())
    return {"target": target, **{f"{m}_{k}": r[k] for m, r in first.items() for k in ("reached", "epoch", "train_s")},
            "ff_over_ddp_time": ratio, "same_train_s": same,
            **{f"{m}_val_at_same_train_s": accuracy_at(v["curve"], same) for m, v in methods.items()}}


def time_to_accuracy(tta: dict, workers: int, work: Path, cores: int) -> dict:
    """Train FF (N stages) and DDP-BP (N workers) on the `tta` settings (TTA or TTA_QUICK); curves and times
    to every target."""
    cfg = work / "tta.yaml"
    train = f"train: {{epochs: {tta['epochs']}, eval_every: 1, progress: false}}\n"
    cfg.write_text(config_text(tta["model"], Size(tta["width"], tta["batch"], None), train, tta["dataset"]))
    images = TRAIN_IMAGES if tta["dataset"] is None else get_spec(tta["dataset"]).train_size
    steps = tta["epochs"] * (images // tta["batch"])
    methods = {}
    for method in ("ff_pipeline", "ddp_bp"):
        out = Path(tempfile.mkdtemp(dir=work))
        cmd = (runner.ff_command(cfg, workers, 1, steps, out) if method == "ff_pipeline"
               else runner.bp_command(cfg, workers, steps, out))
        _, failures = attempt(cmd, out, epoch=tta["epochs"])
        points = curve(out, tta["readouts"][method])
        shutil.rmtree(out)
        shape = f"{workers} stage(s) x 1 replica(s)" if method == "ff_pipeline" else f"{workers} worker(s)"
        label = f"{method} {shape}"
        methods[method] = {"label": label, "workers": workers, "oversubscribed": workers > cores,
                           "readout": tta["readouts"][method], "final_val": points[-1]["val"], "curve": points,
                           "reached": [reached(points, t) for t in tta["targets"]], "failed_attempts": failures}
        print(f"time to accuracy, {label}: final val {points[-1]['val']:.3f}", flush=True)
    return {**tta, "workers": workers, "config": cfg.read_text(), "methods": methods,
            "summary": tta_summary(methods, max(tta["targets"]))}
