"""Predict pipeline throughput instead of measuring it: an event-driven simulator of ffpipe's FF pipeline
(bounded wire queues, links, replicas' all-reduce, the joint head's error channel), a cost model of
data-parallel backprop, and predictions for 2..16 devices from measured per-block times.

`simulate_pipeline` (pipeline.py) and `simulate_ddp` (ddp.py) are the models; `load_times` (times.py) reads
measured times; `predict` (predict.py) compares FF layouts with DDP; `cmd_simulate` (commands.py) is
`ffpipe bench simulate`. Link presets with their sources are in links.py.
"""

from ffpipe.lab.sim.ddp import DDPResult, simulate_ddp
from ffpipe.lab.sim.links import PRESETS, Link, link_preset, ring_allreduce_s
from ffpipe.lab.sim.pipeline import SimResult, StageSpec, StageStats, simulate_pipeline
from ffpipe.lab.sim.predict import ANCHORS, predict, simulate_layout
from ffpipe.lab.sim.times import MeasuredTimes, activation_bytes, load_times, times_from_dict

__all__ = [
    "ANCHORS", "DDPResult", "Link", "MeasuredTimes", "PRESETS", "SimResult", "StageSpec", "StageStats",
    "activation_bytes", "link_preset", "load_times", "predict", "ring_allreduce_s", "simulate_ddp",
    "simulate_layout", "simulate_pipeline", "times_from_dict",
]
