"""Benchmark gates: minutes long, excluded from the default run. Select with `pytest -m slow`."""

from __future__ import annotations

import json

import pytest

from loopwm.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_meets_the_foundation_bar(tmp_path):
    """The demo's model beats half the best floor at horizons 1 and 10, and stays bounded for 1,000 steps."""
    run_demo(DemoConfig(out=str(tmp_path / "demo"), progress=False))
    result = json.loads((tmp_path / "demo" / "eval.json").read_text())
    for h in ("1", "10"):
        best = min(result["floors"][name][h] for name in ("copy_last", "constant_velocity", "mean"))
        assert result["open_loop_error"][h] <= 0.5 * best, (h, result["open_loop_error"][h], best)
    assert result["rollout_finite"] and result["rollout_inside_box"] == 1.0
    assert 0.5 <= result["rollout_std_ratio"] <= 2.0
    assert result["max_a_bar"] < 1.0
