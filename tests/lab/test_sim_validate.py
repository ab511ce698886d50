"""ffpipe.lab.sim.validate: predicting a measured run from a separate 1-process profile, with the cores cap."""

from __future__ import annotations

import pytest

from ffpipe.errors import FFPipeError
from ffpipe.lab.sim import link_preset, times_from_dict
from ffpipe.lab.sim.validate import one_process_rate, predict_measured, relative_error


def _profile(*compute_s: float, batch: int = 100):
    return times_from_dict({"batch": batch, "blocks": [{"compute_s": c, "units": 10} for c in compute_s]})


def test_one_process_rate_is_the_batch_over_the_summed_block_times():
    assert one_process_rate(_profile(0.01, 0.03)) == pytest.approx(100 / 0.04)


def test_stages_within_the_cores_run_at_the_slowest_stage():
    pred = predict_measured(_profile(0.02, 0.02), [1, 1], cores=2, link=link_preset("ideal"))
    assert pred["prediction"] is True and pred["processes"] == 2
    assert pred["samples_per_s"] == pytest.approx(100 / 0.02) == pytest.approx(pred["pipeline_samples_per_s"])
    assert pred["cores_cap_samples_per_s"] is None and pred["limit"].endswith("compute")
    uneven = predict_measured(_profile(0.01, 0.03), [1, 1], cores=2, link=link_preset("ideal"))
    assert uneven["samples_per_s"] == pytest.approx(100 / 0.03)


def test_more_processes_than_cores_are_capped_at_cores_times_the_one_process_rate():
    profile = _profile(0.01, 0.01, 0.01, 0.01)
    over = predict_measured(profile, [1, 1, 1, 1], cores=2, link=link_preset("ideal"))
    assert over["pipeline_samples_per_s"] == pytest.approx(100 / 0.01)
    assert over["cores_cap_samples_per_s"] == pytest.approx(2 * 100 / 0.04)
    assert over["samples_per_s"] == pytest.approx(5000) and over["limit"] == "cores"
    enough = predict_measured(profile, [1, 1, 1, 1], cores=4, link=link_preset("ideal"))
    assert enough["samples_per_s"] == pytest.approx(10000) and enough["cores_cap_samples_per_s"] is None


def test_the_default_link_is_the_measured_loopback_whose_fixed_cost_limits_tiny_stages():
    pred = predict_measured(_profile(1e-4, 1e-4), [1, 1], cores=2)
    assert pred["link"].startswith("cpu-loopback") and pred["limit"].startswith("link")
    assert pred["samples_per_s"] < 100 / link_preset("cpu-loopback").latency_s


def test_relative_error_and_bad_partition():
    assert relative_error(110.0, 100.0) == pytest.approx(0.1) == relative_error(90.0, 100.0)
    with pytest.raises(FFPipeError, match="partition"):
        predict_measured(_profile(0.01, 0.01), [2, 1], cores=2)
