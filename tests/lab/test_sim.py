"""The simulator against cases solved by hand, and against an independent max-plus recurrence of the schedule.

Exact cases (float tolerance): one stage runs at B / (f + u); P equal stages with free links at P times that;
a slow stage caps everyone at its own rate; a link slower than compute caps at one message per transfer time;
the joint head's error round trip; replicas' ring all-reduce; DDP's cost formula.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from ffpipe.errors import FFPipeError
from ffpipe.lab.sim import (
    PRESETS,
    Link,
    StageSpec,
    link_preset,
    load_times,
    predict,
    ring_allreduce_s,
    simulate_ddp,
    simulate_layout,
    simulate_pipeline,
    times_from_dict,
)
from ffpipe.lab.sim.commands import render
from ffpipe.lab.sim.times import FORWARD_FRACTION, HEADER_BYTES, activation_bytes, times_from_run

IDEAL = link_preset("ideal")


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def _waits_sum_to_100(result):
    for s in result.stages:
        assert 100 * s.utilisation + s.idle_pct + s.send_blocked_pct + s.error_wait_pct == pytest.approx(100)


# -- analytic cases ------------------------------------------------------------------------------------------------
def test_one_stage_runs_at_batch_over_forward_plus_update():
    result = simulate_pipeline([StageSpec(0.3, 0.2)], 64, link=link_preset("pcie4"))
    assert result.throughput == approx(64 / 0.5)
    assert result.bound_samples_per_s == approx(64 / 0.5) and result.fraction == approx(1.0)
    assert result.stages[0].utilisation == approx(1.0)


def test_equal_stages_with_free_links_are_P_times_one_stage():
    f, u, P = 0.011, 0.017, 4
    one = simulate_pipeline([StageSpec(P * f, P * u)], 100)
    many = simulate_pipeline([StageSpec(f, u)] * P, 100, link=IDEAL)
    assert many.throughput == approx(P * one.throughput)
    assert many.throughput == approx(100 / (f + u))
    assert all(s.utilisation == approx(1.0) for s in many.stages)


def test_a_slow_stage_caps_throughput_at_its_own_rate():
    result = simulate_pipeline([StageSpec(1, 1), StageSpec(3, 3), StageSpec(1, 1)], 10)
    assert result.throughput == approx(10 / 6)
    assert result.slowest_stage == 1 and result.limit == "stage 1 compute" and result.fraction == approx(1.0)
    first, slow, last = result.stages
    assert (first.utilisation, first.send_blocked_pct) == (approx(1 / 3), approx(200 / 3))  # held by backpressure
    assert slow.utilisation == approx(1.0)
    assert (last.utilisation, last.idle_pct) == (approx(1 / 3), approx(200 / 3))  # starved
    _waits_sum_to_100(result)


def test_communication_slower_than_compute_becomes_the_bottleneck():
    # 2000 bytes at 1 kB/s + 0.5 s latency = 2.5 s per message > 2 s of compute per step
    link = Link("slow", 1e3, 0.5)
    result = simulate_pipeline([StageSpec(1, 1, out_bytes=2000), StageSpec(1, 1)], 8, link=link)
    assert result.transfer_s == [approx(2.5)]
    assert result.throughput == approx(8 / 2.5) and result.link_bound_samples_per_s == approx(8 / 2.5)
    assert result.limit == "link 0->1" and result.fraction == approx(2 / 2.5)
    _waits_sum_to_100(result)
    fast = simulate_pipeline([StageSpec(1, 1, out_bytes=2000), StageSpec(1, 1)], 8, link=Link("fast", 1e4, 0.5))
    assert fast.throughput == approx(8 / 2)  # 0.7 s per message hides behind compute


def test_queue_depth_buffers_jitter():
    # bursts in opposite phase: stage 0 takes 1 s per step for 4 steps then 3 s, stage 1 the reverse; both
    # average 2 s. Depth 1 stalls (17 s per 8 steps, from the recurrence below); depth 2 absorbs the bursts.
    fast, slow = [0.5] * 4 + [1.5] * 4, [1.5] * 4 + [0.5] * 4
    stages = [StageSpec(fast, fast), StageSpec(slow, slow)]
    step = {q: simulate_pipeline(stages, 1, queue_depth=q).step_s for q in (1, 2, 3, 8)}
    assert step[1] == approx(17 / 8) == approx(_recurrence_step(stages, 1, [0.0]))
    assert step[2] == step[3] == step[8] == approx(2.0)


def test_joint_head_error_round_trip_limits_the_rate():
    # 2 stages, f = u = 1, every message E seconds. Stage 0 applies step t-1's error after its step t, so
    # s(t+1) = max(s(t) + 2, s(t-1) + f0 + E + f1 + u1 + E): two steps per round trip, 2 * step = 3 + 2E.
    for latency in (1.0, 2.0):
        link = Link("lat", math.inf, latency)
        result = simulate_pipeline([StageSpec(1, 1), StageSpec(1, 1)], 1, link=link, head_error_bytes=0)
        assert result.step_s == approx(1.5 + latency)
        assert result.limit == "dependency cycle"
        _waits_sum_to_100(result)
        local = simulate_pipeline([StageSpec(1, 1), StageSpec(1, 1)], 1, link=link)
        assert local.step_s == approx(max(2.0, latency))  # no backward channel: only the link's own rate


def test_replicas_add_a_ring_allreduce_per_block_to_the_update():
    net = Link("net", 1e9, 1e-3)
    stages = [StageSpec(0.01, 0.01, grad_bytes=(1e6,)), StageSpec(0.005, 0.005, grad_bytes=(2e6, 2e6))]
    result = simulate_pipeline(stages, 25, replicas=4, allreduce_link=net)
    ring = [2 * 3 / 4 * 1e6 / 1e9 + 2 * 3 * 1e-3, 2 * (2 * 3 / 4 * 2e6 / 1e9 + 2 * 3 * 1e-3)]
    assert result.allreduce_s == [approx(ring[0]), approx(ring[1])]
    assert result.throughput == approx(4 * 25 / (0.01 + ring[1]))  # stage 1: 0.01 + 0.018 > stage 0: 0.0275
    assert result.batch == 100


# -- an independent model: the schedule as a max-plus recurrence (no joint head) -------------------------------------
def _recurrence_step(stages: list[StageSpec], q: int, transfer: list[float], steps: int = 400) -> float:
    """Last stage's steady-state seconds per step, computed step by step from the wire's rules:
    a send returns once transfer t-q finished; transfer t starts after transfer t-1 (one link) and once the
    receiver took message t-q (it holds at most q); a stage takes packet t after its own step t-1 ended."""
    P = len(stages)
    cyc = [(s.cycle("forward_s"), s.cycle("update_s")) for s in stages]
    R = [[0.0] * steps for _ in range(P)]  # stage k took packet t
    C = [[0.0] * steps for _ in range(P)]  # transfer t on link k done
    D = [[0.0] * steps for _ in range(P)]  # stage k finished step t
    for t in range(steps):
        for k in range(P):
            f, u = cyc[k][0][t % len(cyc[k][0])], cyc[k][1][t % len(cyc[k][1])]
            start = D[k][t - 1] if t else 0.0
            R[k][t] = max(start, C[k - 1][t]) if k else start
            sent = R[k][t] + f
            if k < P - 1:
                sent = max(sent, C[k][t - q] if t >= q else 0.0)
                begin = max(sent, C[k][t - 1] if t else 0.0, R[k + 1][t - q] if t >= q else 0.0)
                C[k][t] = begin + transfer[k]
            D[k][t] = sent + u
    window = steps // 2
    return (D[-1][steps - 1] - D[-1][steps - 1 - window]) / window


@pytest.mark.parametrize("seed", range(6))
def test_event_simulation_matches_the_recurrence(seed):
    rng = random.Random(seed)
    P, q = rng.randint(2, 5), rng.randint(1, 3)
    stages = [StageSpec([rng.uniform(0.1, 2) for _ in range(rng.choice([1, 2, 4]))],
                        [rng.uniform(0.1, 2) for _ in range(rng.choice([1, 2, 5]))], out_bytes=rng.uniform(0, 1e3))
              for _ in range(P)]
    link = Link("l", 1e3, rng.uniform(0, 0.5))
    result = simulate_pipeline(stages, 1, link=link, queue_depth=q, steps=400, warmup=200)
    expected = _recurrence_step(stages, q, [link.transfer_s(s.out_bytes) for s in stages[:-1]])
    assert result.step_s == pytest.approx(expected, rel=1e-9)
    _waits_sum_to_100(result)


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(FFPipeError, match="at least one stage"):
        simulate_pipeline([], 1)
    with pytest.raises(FFPipeError, match="seconds >= 0"):
        simulate_pipeline([StageSpec(-1, 1)], 1)
    with pytest.raises(FFPipeError, match="queue depth"):
        simulate_pipeline([StageSpec(1, 1)], 1, queue_depth=0)
    with pytest.raises(FFPipeError, match="more steps"):
        simulate_pipeline([StageSpec([1] * 7, 1)], 1, steps=10)
    with pytest.raises(FFPipeError, match="zero time"):
        simulate_pipeline([StageSpec(0, 0)], 1)


# -- links and DDP -------------------------------------------------------------------------------------------------
def test_ring_allreduce_matches_a_hand_computed_value():
    link = link_preset("nvlink-a100")  # effective: 200 GB/s, 3.4 us
    assert ring_allreduce_s(100e6, 4, link) == approx(2 * 3 / 4 * 100e6 / 200e9 + 2 * 3 * 3.4e-6)  # 7.704e-4 s
    assert ring_allreduce_s(100e6, 4, link) == approx(7.704e-4)
    assert ring_allreduce_s(100e6, 1, link) == 0.0


def test_ddp_model():
    link = link_preset("nvlink-a100")
    one = simulate_ddp(0.01, 128, 100e6, 1, link, efficiency=0.5, overlap=1.0)
    assert (one.allreduce_s, one.step_s, one.speedup) == (0.0, approx(0.01), approx(1.0))
    four = simulate_ddp(0.01, 128, 100e6, 4, link)
    assert four.step_s == approx(0.01 / 4 + 7.704e-4) and four.throughput == approx(128 / four.step_s)
    assert simulate_ddp(0.01, 128, 100e6, 4, link, efficiency=0.5).compute_s == approx(0.005)
    half = simulate_ddp(0.01, 128, 100e6, 4, link, overlap=0.5)
    assert half.exposed_allreduce_s == approx(7.704e-4 / 2)
    capped = simulate_ddp(3e-4, 128, 100e6, 4, link, overlap=1.0)  # hidden at most by the backward: 2/3 * 75 us
    assert capped.exposed_allreduce_s == approx(7.704e-4 - 2 / 3 * 7.5e-5)
    with pytest.raises(FFPipeError):
        simulate_ddp(0.01, 128, 1e6, 2, link, efficiency=0)


def test_link_presets_are_sourced_and_named():
    for name, preset in PRESETS.items():
        assert preset.source and preset.nominal_Bps >= preset.effective_Bps > 0, name
    assert link_preset("nvlink") == PRESETS["nvlink-h100"].link()
    assert link_preset("ib-hdr", nominal=True).bandwidth_Bps == 25e9
    assert link_preset("pcie4").transfer_s(25e6) == approx(5.7e-6 + 1e-3)
    with pytest.raises(FFPipeError, match="unknown link"):
        link_preset("carrier-pigeon")


def test_header_size_agrees_with_the_wire():
    from ffpipe.pipeline.wire import HEADER_BYTES as WIRE_HEADER

    assert HEADER_BYTES == WIRE_HEADER
    assert activation_bytes(2000, 100) == 3 * 100 * 2000 * 4 + 100 * 8 + HEADER_BYTES


# -- measured times in, predictions out ------------------------------------------------------------------------------
TIMES = {"batch": 100, "blocks": [{"forward_s": 0.004, "update_s": 0.005, "units": 2000, "params": 1_570_000},
                                  {"compute_s": 0.008, "out_bytes": 1e6, "grad_bytes": 16e6},
                                  {"compute_s": 0.008, "units": 2000, "params": 4_002_000},
                                  {"compute_s": 0.006, "units": 10, "params": 20_010}],
         "partition": [[0], [1], [2, 3]], "measured_samples_per_s": 9000.0}


def test_times_file_is_read_and_checked(tmp_path):
    path = tmp_path / "times.json"
    path.write_text(json.dumps(TIMES))
    times = load_times(path)
    assert times.partition == (1, 1, 2) and times.global_batch == 100
    assert times.blocks[1].forward_s == approx(0.008 * FORWARD_FRACTION)
    assert times.blocks[0].out_bytes == activation_bytes(2000, 100) and times.blocks[2].grad_bytes == 4 * 4_002_000
    stages, batch, _ = times.stage_specs([2, 2], replicas=2, efficiency=0.5)
    assert batch == 50 and stages[0].forward_s == approx((0.004 + 0.004) * 0.5 / 0.5)
    assert stages[0].out_bytes == approx(HEADER_BYTES + (1e6 - HEADER_BYTES) / 2)
    for bad, message in (({"blocks": []}, "needs 'batch'"), ({**TIMES, "batchh": 1}, "unknown keys"),
                         ({**TIMES, "partition": [1, 1]}, "partition"),
                         ({"batch": 1, "blocks": [{"forward_s": -1, "update_s": 0}]}, "forward_s")):
        with pytest.raises(FFPipeError, match=message):
            times_from_dict(bad)
    path.write_text("{not json")
    with pytest.raises(FFPipeError, match="not JSON"):
        load_times(path)


def test_run_directory_gives_last_epoch_times(tmp_path):
    from ffpipe.config import dump_config, load_config
    from ffpipe.data.catalog import get_spec
    from ffpipe.ff.blocks import block_specs

    cfg = load_config(None, ["data.batch_size=40", "pipeline.stages=2", "pipeline.replicas=2"])
    dump_config(cfg, tmp_path / "config.yaml")
    specs = block_specs(cfg.model, get_spec(cfg.data.name).image_shape)
    blocks = [{"index": i, "compute_s": 0.5 * (i + 1)} for i in range(len(specs))]
    stages = [{"stage": 0, "blocks": [0]}, {"stage": 1, "blocks": list(range(1, len(specs)))}]
    lines = [{"epoch": 1, "step": 50, "blocks": blocks, "stages": stages, "samples_per_s": 1.0},
             {"epoch": 2, "step": 75, "blocks": blocks, "stages": stages, "samples_per_s": 123.0},
             {"kind": "test", "step": 75, "test": {}}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    times = load_times(tmp_path)
    assert times.batch == 20 and times.replicas == 2 and times.partition == (1, len(specs) - 1)
    assert times.blocks[1].forward_s + times.blocks[1].update_s == approx(1.0 / 25)  # 25 steps in epoch 2
    assert times.blocks[0].out_bytes == activation_bytes(specs[0].units, 20)
    assert times.measured_samples_per_s == 123.0 and times.head_error_bytes == HEADER_BYTES + 4 * 20 * 10
    first = times_from_run(tmp_path, epoch=1)  # a chosen epoch, not the last one
    assert first.measured_samples_per_s == 1.0
    assert first.blocks[1].forward_s + first.blocks[1].update_s == approx(1.0 / 50)  # 50 steps in epoch 1
    with pytest.raises(FFPipeError, match="no epoch-3 record"):
        times_from_run(tmp_path, epoch=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FFPipeError, match="metrics.jsonl and config.yaml"):
        load_times(tmp_path / "empty")
    with pytest.raises(FFPipeError, match="does not exist"):
        load_times(tmp_path / "missing.json")


def test_predictions_are_labelled_and_consistent():
    times = times_from_dict(TIMES)
    out = predict(times, [1, 2, 4, 8], link_preset("nvlink"), check_link=IDEAL)
    assert out["check"]["link"]["bandwidth_GBps"] is None  # a free link, in strict JSON
    assert out["prediction"] is True and "PREDICTION" in out["label"]
    assert out["ff_1_device"]["samples_per_s"] == approx(100 / (0.009 + 0.008 + 0.008 + 0.006))
    assert "ESTIMATED" in out["bp_1_device"]["step_source"]
    rows = {row["devices"]: row for row in out["rows"]}
    assert rows[1]["ff"]["speedup"] == approx(1.0) and rows[1]["ddp"]["speedup"] == approx(1.0)
    for n, row in rows.items():
        assert row["ff"]["devices_used"] <= n and 100 % row["ff"]["replicas"] == 0
        assert row["ff"]["speedup"] <= n + 1e-9 and row["ddp"]["speedup"] <= n + 1e-9
    assert rows[8]["ff"]["samples_per_s"] >= rows[4]["ff"]["samples_per_s"] >= rows[2]["ff"]["samples_per_s"]
    assert out["check"]["layout"]["partition"] == [1, 1, 2]
    assert out["check"]["simulated_over_measured"] == approx(out["check"]["layout"]["samples_per_s"] / 9000)
    layout = simulate_layout(times, [1, 1, 2], 1, IDEAL)
    assert layout["samples_per_s"] == approx(100 / 0.014)  # the last stage: 0.008 + 0.006
    assert "PREDICTION" in render(out)


def test_simulate_command(tmp_path, capsys, run_cli):
    path = tmp_path / "times.json"
    path.write_text(json.dumps({**TIMES, "bp_step_s": 0.02}))
    assert run_cli("bench", "simulate", "--times", str(path), "--devices", "2,4", "--link", "ib-hdr", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["devices"] for row in out["rows"]] == [2, 4] and out["bp_1_device"]["step_source"] == "measured"
    assert out["link"]["bandwidth_GBps"] == 24.0
    with pytest.raises(FFPipeError, match="unknown link"):
        run_cli("bench", "simulate", "--times", str(path), "--link", "nope")
    with pytest.raises(SystemExit):
        run_cli("bench", "simulate", "--times", str(path), "--devices", "0")
