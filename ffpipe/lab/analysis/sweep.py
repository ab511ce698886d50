"""`ffpipe sweep`: train every grid point × seed as an ordinary run directory, resumably.

Each run is trained by the very entry points a single run uses: `ffpipe.run.sequential.train(cfg, out, resume=True)`
in this process when one run at a time goes through the sequential trainer, else `python -m ffpipe.cli train
... --out RUN --resume` as a subprocess (`--parallel J` of them at once; with pipeline stages the subprocess
starts the pipeline itself). A sweep therefore resumes exactly like a run does: a run whose metrics.jsonl
holds its final `{"kind": "test"}` record is skipped, any other is (re)started with `resume`, which continues
from its newest complete checkpoint, or from scratch when there is none.

Each run's own console output goes to `RUN/train.log`; the terminal shows one progress view over the sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ffpipe.config import Config, load_config, to_dict
from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.grid import Axis, Point, check_axes, expand, short_keys
from ffpipe.lab.analysis.runs import SWEEP_FILE, flatten, load_run
from ffpipe.run.checkpoint import atomic_write_bytes
from ffpipe.run.sequential import train

LOG = "train.log"
IGNORED = ("train.progress", "train.device", "data.dir", "run.", "pipeline.")
"""Config keys (prefixes) a run may differ in from the sweep's request: they do not change what is learned
(a pipelined run equals the sequential one, so `pipeline.*` is here too)."""
LENGTH = ("train.epochs", "train.max_steps")


@dataclass
class SweepPlan:
    """What to train. `config` None means the built-in defaults (the CLI resolves configs/default.yaml)."""

    out: Path
    axes: list[Axis]
    seeds: list[int]
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    stages: int | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_axes(self.axes)
        self.points = expand(self.axes, self.seeds)
        shorts = short_keys([axis.key for axis in self.axes])
        self.names = {point: point.name(shorts) for point in self.points}

    def run_dir(self, point: Point) -> Path:
        return self.out / self.names[point]

    def run_overrides(self, point: Point) -> list[str]:
        stages = [f"pipeline.stages={self.stages}"] if self.stages else []
        return list(self.overrides) + point.overrides() + stages

    def config_for(self, point: Point) -> Config:
        try:
            return load_config(self.config, self.run_overrides(point))
        except FFPipeError as exc:
            raise FFPipeError(f"run {self.names[point]}: {exc}") from None

    def manifest(self) -> dict:
        config = str(Path(self.config).resolve()) if self.config else None
        return {"config": config, "overrides": self.overrides, "stages": self.stages, "seeds": self.seeds,
                "axes": [{"key": a.key, "values": list(a.values)} for a in self.axes],
                "runs": [self.names[p] for p in self.points]}


def run_state(run_dir: Path, cfg: Config) -> str:
    """"done" (skip it) or "todo" (train with resume); a run trained with another config is an error, except
    one asked to train longer than it did, which then continues."""
    if not (run_dir / "config.yaml").is_file():
        return "todo"
    saved = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    wanted = flatten(json.loads(json.dumps(to_dict(cfg))))
    longer = False
    for key in sorted(saved):  # a key the saved config lacks is newer than the run: nothing to compare
        old, new = saved[key], wanted.get(key)
        if old == new or key.startswith(IGNORED):
            continue
        if key in LENGTH and (new is None or (old is not None and new > old)):  # None: no step cap
            longer = True
            continue
        raise FFPipeError(f"{run_dir} was trained with {key}={old!r} but the sweep asks for {new!r}; "
                          "use another --out, or delete that run")
    return "todo" if longer or not _has_test_record(run_dir) else "done"


def _has_test_record(run_dir: Path) -> bool:
    """Whether metrics.jsonl ends the run; tolerant of a torn last line (a crash mid-write)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line).get("kind") == "test":
                return True
        except (json.JSONDecodeError, AttributeError):
            continue
    return False


@dataclass
class Outcome:
    name: str
    status: str  # "trained", "skipped" or "failed"
    seconds: float = 0.0
    message: str = ""


def _test_line(run_dir: Path) -> str:
    test = load_run(run_dir).test or {}
    shown = [f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float)]
    return "test " + ", ".join(shown) if shown else "no test result"


def _error_line(log: Path, code: int) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    errors = [line for line in lines if line.startswith("ffpipe: error:")]
    return errors[-1].removeprefix("ffpipe: error: ") if errors else f"exit code {code}; see {log}"


def _train_here(cfg: Config, run_dir: Path) -> None:
    """The sequential trainer in this process, its console output into RUN/train.log."""
    with open(run_dir / LOG, "a") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            train(cfg, out=str(run_dir), resume=True)
        except Exception as exc:
            if not isinstance(exc, FFPipeError):
                traceback.print_exc()  # a bug, not a user error: its traceback goes to the run's log
            raise


def _command(plan: SweepPlan, point: Point) -> list[str]:
    config = ["--config", str(Path(plan.config).resolve())] if plan.config else []
    sets = [arg for item in plan.run_overrides(point) for arg in ("--set", item)]
    return [sys.executable, "-m", "ffpipe.cli", "train", *config, *sets, "--out", str(plan.run_dir(point)),
            "--resume"]


class _Children:
    """The live subprocesses, so an interrupt can stop them instead of leaving them training."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, cmd: list[str], log: Path, env: dict) -> int:
        with open(log, "a") as out:
            with self.lock:
                if self.stopping:
                    return 130
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
                self.procs.add(proc)
            code = proc.wait()
        with self.lock:
            self.procs.discard(proc)
        return code

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.procs:
                proc.terminate()


class SweepView:
    """Runs done / total and the runs in flight, plus one line per finished run (the only output when the
    console is not a terminal, so logs get lines instead of redraws)."""

    def __init__(self, total: int, done: int, console: Console):
        self.console, self.running = console, []
        self.lock = threading.Lock()  # runs start and finish on worker threads
        self.progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[current]}"), console=console,
                                 disable=not console.is_terminal)
        self.task = self.progress.add_task("sweep", total=total, completed=done, current="")

    def __enter__(self) -> SweepView:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def _current(self) -> str:
        return "running: " + ", ".join(self.running) if self.running else ""

    def started(self, name: str) -> None:
        with self.lock:
            self.running.append(name)
            self.progress.update(self.task, current=self._current())

    def finished(self, outcome: Outcome, detail: str) -> None:
        with self.lock:
            self.running.remove(outcome.name)
            self.progress.update(self.task, advance=1, current=self._current())
            task = self.progress.tasks[0]
            self.console.print(f"[{int(task.completed)}/{int(task.total)}] {outcome.name} {outcome.status} "
                               f"in {outcome.seconds:.0f} s: {detail}", highlight=False)


def run_sweep(plan: SweepPlan, parallel: int = 1, console: Console | None = None) -> list[Outcome]:
    """Train every run of `plan` not finished yet; returns one outcome per run, in plan order.

    Every config is built (validated) and checked against what its run directory already holds before
    anything trains, so a typo in the grid costs nothing. A run that fails is reported and the sweep goes on.
    """
    if parallel < 1:
        raise FFPipeError(f"--parallel must be at least 1, got {parallel}")
    configs = {point: plan.config_for(point) for point in plan.points}
    states = {point: run_state(plan.run_dir(point), cfg) for point, cfg in configs.items()}
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(plan.out / SWEEP_FILE, (json.dumps(plan.manifest(), indent=1) + "\n").encode())
    outcomes = {p: Outcome(plan.names[p], "skipped") for p in plan.points if states[p] == "done"}
    todo = [p for p in plan.points if states[p] == "todo"]
    in_process = parallel == 1 and all(c.pipeline.stages * c.pipeline.replicas == 1 for c in configs.values())
    console = console or Console(file=sys.stdout)
    with SweepView(len(plan.points), len(outcomes), console) as view:
        if in_process:
            for point in todo:
                outcomes[point] = _one(plan, point, view, lambda p=point: _train_here(configs[p], plan.run_dir(p)))
        else:
            outcomes.update(_in_subprocesses(plan, todo, parallel, configs, view))
    return [outcomes[p] for p in plan.points]


def _one(plan: SweepPlan, point: Point, view: SweepView, work) -> Outcome:
    name, run_dir = plan.names[point], plan.run_dir(point)
    run_dir.mkdir(parents=True, exist_ok=True)
    view.started(name)
    t0 = time.perf_counter()
    try:
        work()
        outcome = Outcome(name, "trained", time.perf_counter() - t0)
        detail = _test_line(run_dir)
    except FFPipeError as exc:
        outcome = Outcome(name, "failed", time.perf_counter() - t0, str(exc))
        detail = outcome.message
    except Exception as exc:
        outcome = Outcome(name, "failed", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}; see "
                          f"{run_dir / LOG}")
        detail = outcome.message
    view.finished(outcome, detail)
    return outcome


def _in_subprocesses(plan: SweepPlan, todo: list[Point], parallel: int, configs: dict,
                     view: SweepView) -> dict[Point, Outcome]:
    """`parallel` `ffpipe train` subprocesses at a time; each gets cores/(parallel·processes) torch threads
    unless OMP_NUM_THREADS is set (our choice: J runs must not oversubscribe the cores J-fold)."""
    children = _Children()

    def work(point: Point) -> None:
        cfg = configs[point]
        env = dict(os.environ)
        procs = parallel * cfg.pipeline.stages * cfg.pipeline.replicas
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
        log = plan.run_dir(point) / LOG
        code = children.run(_command(plan, point), log, env)
        if code:
            raise FFPipeError(_error_line(log, code))

    outcomes = {}
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        futures = {pool.submit(_one, plan, p, view, lambda p=p: work(p)): p for p in todo}
        for future in as_completed(futures):
            outcomes[futures[future]] = future.result()
    except BaseException:
        children.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes
