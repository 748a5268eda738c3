"""Open-loop scoring: the floors and the error measure behave as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loopwm.eval.openloop import floor_predictions, normalised_error, rollout_stats
from tests.test_cli import trained  # noqa: F401 - the fixture is used below
from tests.test_model import small_model


def straight_line_episode(T: int = 8) -> torch.Tensor:
    """Free flight of 4 bodies, no contacts: x_t = x_0 + t * dt * v."""
    obs = torch.zeros(1, T + 1, 4, 7)
    x0 = torch.tensor([[0.3, 0.3], [0.5, 0.6], [0.7, 0.4], [0.4, 0.8]])
    v = torch.tensor([[0.1, 0.0], [0.0, -0.2], [-0.1, 0.1], [0.05, -0.05]])
    for t in range(T + 1):
        obs[0, t, :, :2] = x0 + t * 0.05 * v
        obs[0, t, :, 2:4] = v
    obs[..., 4] = 0.06
    return obs


def test_constant_velocity_floor_is_exact_in_free_flight_and_copy_last_is_not():
    model = small_model()
    obs = straight_line_episode()
    floors = floor_predictions(model, obs, last_index=2, horizon=5)
    true = obs[:, 3:8]
    assert float(normalised_error(model, floors["constant_velocity"], true).max()) < 1e-10
    copy = normalised_error(model, floors["copy_last"], true)[0]
    assert bool((copy[1:] > copy[:-1]).all())  # grows with the horizon
    assert floors["mean"].shape == true.shape


def test_error_ignores_static_features_and_is_normalised():
    model = small_model()
    true = straight_line_episode()[:, :3]
    pred = true.clone()
    pred[..., 4] += 10.0  # the radius never varies in the data: not scored
    assert float(normalised_error(model, pred, true).max()) == 0.0
    pred = true.clone()
    pred[..., 0] += model.std_safe[0]  # one std off in x for every body
    n_dynamic = int(model.dynamic.sum())
    torch.testing.assert_close(normalised_error(model, pred, true), torch.full((1, 3), 1.0 / n_dynamic))


def test_rollout_stats_flag_collapse_and_escape():
    model = small_model()
    rng = np.random.default_rng(0)
    true = np.zeros((200, 4, 7), np.float32)
    true[..., :2] = rng.uniform(0.1, 0.9, (200, 4, 2))
    true[..., 2:4] = rng.normal(0, 0.3, (200, 4, 2))
    true[..., 4] = 0.06
    collapsed = true.copy()
    collapsed[..., :4] = true[..., :4].mean(axis=(0, 1))
    stats = rollout_stats(model, {"true": true, "pred": collapsed})
    assert stats["rollout_std_ratio"] < 0.1
    escaped = true.copy()
    escaped[..., 0] += 5.0
    stats = rollout_stats(model, {"true": true, "pred": escaped})
    assert stats["rollout_inside_box"] == 0.0 and stats["rollout_max_abs"] > 5
    assert rollout_stats(model, {"true": true, "pred": true})["rollout_std_ratio"] == 1.0


def test_effort_by_difficulty_splits_free_flight_from_hard_steps():
    import numpy as np

    from loopwm.eval.openloop import effort_by_difficulty

    rollout = {"tracked_solver_iterations": np.array([0, 0, 3, 9, 12, 0]),
               "tracked_iterations": np.array([2, 2, 4, 6, 8, 3]),
               "tracked_token_iterations": np.array([1.0, 1.5, 2.0, 3.0, 4.0, 1.0])}
    stats = effort_by_difficulty(rollout, hard=8)
    assert stats["easy_steps"] == 3 and stats["hard_steps"] == 2
    assert stats["easy_iterations"] == pytest.approx(7 / 3) and stats["hard_iterations"] == pytest.approx(7.0)
    assert stats["easy_token_iterations"] == pytest.approx(3.5 / 3) and stats["hard_token_iterations"] == pytest.approx(3.5)
    assert stats["tracked_iterations_solver_spearman"] > 0.9


def test_rail_frames_are_a_wide_band_around_the_line():
    import numpy as np

    from loopwm.eval.evaluate import frame_renderer
    from tests.test_model import small_model

    model = small_model()
    obs = np.zeros((4, 7), dtype=np.float32)
    obs[:, 0], obs[:, 1], obs[:, 4] = np.linspace(0.1, 0.9, 4), 0.5, 0.01
    frame = frame_renderer(model, "loopwm/Rail-v0", size=128)(obs)
    assert frame.shape == (48, 384, 3)
    assert (frame.max(-1) > 100).any()  # the discs are in the band
    assert frame_renderer(model, "loopwm/Balls-v0", size=64)(obs).shape == (64, 64, 3)


def test_open_loop_errors_in_a_reference_models_units(trained):  # noqa: F811 - pytest fixture
    from types import SimpleNamespace

    from loopwm.checkpoint import load_model
    from loopwm.data import load_dataset
    from loopwm.eval.openloop import open_loop

    model, meta = load_model(trained / "run", "cpu")
    ds = load_dataset(trained / "data")
    episodes = np.asarray(meta["val_episodes"])
    own = open_loop(model, ds, episodes, context=2, horizon=3, max_windows=16, depth=2)
    same = open_loop(model, ds, episodes, context=2, horizon=3, max_windows=16, depth=2, reference=model)
    np.testing.assert_allclose(same.errors, own.errors)
    # a reference whose training spread is twice as wide sees every squared error a quarter as large
    wider = SimpleNamespace(std_safe=model.std_safe * 2, dynamic=model.dynamic)
    scaled = open_loop(model, ds, episodes, context=2, horizon=3, max_windows=16, depth=2, reference=wider)
    np.testing.assert_allclose(scaled.errors, own.errors / 4, rtol=1e-5)
    np.testing.assert_allclose(scaled.floors["copy_last"], own.floors["copy_last"] / 4, rtol=1e-5)


def test_open_loop_keeps_every_windows_error_and_they_average_to_the_horizon_errors(trained):  # noqa: F811
    from loopwm.checkpoint import load_model
    from loopwm.data import load_dataset
    from loopwm.eval.openloop import open_loop

    model, meta = load_model(trained / "run", "cpu")
    ds = load_dataset(trained / "data")
    res = open_loop(model, ds, np.asarray(meta["val_episodes"]), context=2, horizon=3, max_windows=16, depth=2, batch_size=5)
    assert res.window_errors.shape == (res.windows, len(res.errors))  # batches of 5 are stitched in order
    np.testing.assert_allclose(res.window_errors.mean(0), res.errors, rtol=1e-5)


def test_paired_gap_removes_the_spread_two_models_share():
    from loopwm.eval.openloop import paired_gap
    from loopwm.utils import LoopWMError

    rng = np.random.default_rng(0)
    hard = rng.lognormal(0.0, 1.5, 3000)  # heavy-tailed, like the rail's windows
    worse = hard * 1.02 + rng.normal(0, 0.001, 3000)
    gap, se = paired_gap(worse, hard)
    assert gap == pytest.approx(0.02, abs=0.001)
    # unpaired, the spread of either model alone is far wider than 2%: pairing makes it measurable
    assert 2 * se < 0.005 < hard.std() / np.sqrt(len(hard)) / hard.mean()
    assert paired_gap(hard, worse)[0] < 0
    with pytest.raises(LoopWMError, match="same windows"):
        paired_gap(hard, hard[:10])


def test_bench_findings_name_the_smallest_matching_deep_model_at_each_horizon():
    """findings() reads only result rows: with hand-made errors it must name, per horizon, the
    smallest deep stack within the looped model's spread, and the best test-time depth."""
    from loopwm.eval.bench_report import findings, markdown_table

    errors = {  # model -> (params, {seed: (h1, h10)})
        "looped": (100, {0: (0.10, 0.50), 1: (0.12, 0.52)}),
        "deep-1": (100, {0: (0.20, 0.60), 1: (0.20, 0.60)}),
        "deep-4": (400, {0: (0.12, 0.56), 1: (0.12, 0.56)}),
        "deep-8": (800, {0: (0.09, 0.49), 1: (0.09, 0.49)}),
    }
    rows = []
    for model, (params, seeds) in errors.items():
        for seed, (e1, e10) in seeds.items():
            for h, e in ((1, e1), (10, e10)):
                rows.append({"model": model, "world": "w", "seed": seed, "horizon": h, "budget": "converged", "lr": 1e-3,
                             "error": e, "params": params, "flops_per_step": 1, "steps_per_s_b1": 1.0,
                             "steps_per_s_b256": 1.0, "iterations": 2.0, "train_steps": 10, "train_seconds": 6.0,
                             "train_samples": 320, "stop_reason": "plateau", "floor_copy_last": 1.0})
    depth_rows = [{"world": "w", "seed": s, "depth": d, "error_h10": e} for s in (0, 1) for d, e in ((2, 0.55), (8, 0.47 + s * 0.01))]
    text = findings(rows, depth_rows)
    # h1: looped 0.11 ± 0.01 -> deep-4 (0.12) is within the spread, 4x the parameters
    assert "horizon-1 error (0.1100 ± 0.0100) is deep-4 (0.1200), with 4.00x" in text
    # h10: looped 0.51 ± 0.01 -> deep-4 (0.56) is not, deep-8 (0.49) is
    assert "horizon-10 error (0.5100 ± 0.0100) is deep-8 (0.4900), with 8.00x" in text
    assert "best test-time depth at h10: 8 iterations (0.4750" in text and "0.5500 at the 2 it trained with" in text
    assert "Every run plateaued" in text and "| w | converged | deep-8 | 800 |" in markdown_table(rows)


def test_eval_reads_as_many_observations_as_the_run_trained_on(tmp_path):
    from loopwm.eval.evaluate import training_context

    (tmp_path / "config.json").write_text('{"context": 2}')
    assert training_context(tmp_path) == 2
    assert training_context(tmp_path / "checkpoints" / "step_10.json") == 2  # a checkpoint file of the run
    (tmp_path / "config.json").write_text("[1, 2]")  # not a config: the documented default, not a crash
    assert training_context(tmp_path) == 4
    assert training_context(tmp_path / "missing") == 4


def _record(tmp_path, name, errors, windows=((0, 0), (0, 1), (1, 0)), digest="abc", copy_last=1.0):
    import json

    record = {"run": name, "exit_rule": "fixed", "threshold": 0.0, "depth": 2, "iterations_per_step": 2.0,
              "floors": {"copy_last": {"1": copy_last}},
              "per_window": {"windows": [list(w) for w in windows], "truth_sha256": digest, "errors": {"1": errors}}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_compare_gives_the_paired_gap_and_refuses_what_does_not_pair(tmp_path):
    from loopwm.eval.compare import CompareConfig, compare
    from loopwm.eval.openloop import paired_gap
    from loopwm.utils import LoopWMError

    a = _record(tmp_path, "a", [1.0, 2.0, 4.0])
    b = _record(tmp_path, "b", [1.1, 2.0, 4.5])
    result = compare(CompareConfig(evals=(a, b)))
    gap, se = paired_gap([1.1, 2.0, 4.5], [1.0, 2.0, 4.0])
    assert result["rows"][1]["gap"]["1"] == pytest.approx(gap) and result["rows"][1]["gap_se"]["1"] == pytest.approx(se)
    assert result["rows"][0]["error"]["1"] == pytest.approx(7 / 3)
    refusals = {
        "other windows": _record(tmp_path, "w", [1.0, 2.0, 4.0], windows=((0, 0), (0, 2), (1, 0))),
        "true observations differ": _record(tmp_path, "t", [1.0, 2.0, 4.0], digest="xyz"),
        "different units": _record(tmp_path, "u", [1.0, 2.0, 4.0], copy_last=1.5),
    }
    for message, path in refusals.items():
        with pytest.raises(LoopWMError, match=message):
            compare(CompareConfig(evals=(a, path)))
    with pytest.raises(LoopWMError, match="at least two"):
        compare(CompareConfig(evals=(a,)))
    with pytest.raises(LoopWMError, match="not in every evaluation"):
        compare(CompareConfig(evals=(a, b), horizons=(10,)))
    # a record trimmed by hand (no floors, no rule) still pairs and prints
    import json

    trimmed = json.loads(open(b).read())
    for key in ("floors", "exit_rule", "threshold"):
        trimmed.pop(key)
    (tmp_path / "trimmed.json").write_text(json.dumps(trimmed))
    from loopwm.eval.compare import format_comparison

    assert "trimmed (depth 2)" in format_comparison(compare(CompareConfig(evals=(a, str(tmp_path / "trimmed.json")))))
    bare = tmp_path / "bare.json"
    bare.write_text('{"open_loop_error": {"1": 0.1}}')
    with pytest.raises(LoopWMError, match="--per-window"):
        compare(CompareConfig(evals=(a, str(bare))))


def test_per_window_record_pairs_only_identical_truth(trained):  # noqa: F811 - pytest fixture
    from loopwm.checkpoint import load_model
    from loopwm.data import load_dataset
    from loopwm.eval.evaluate import per_window_record
    from loopwm.eval.openloop import open_loop, truth_digest

    model, meta = load_model(trained / "run", "cpu")
    ds = load_dataset(trained / "data")
    episodes = np.asarray(meta["val_episodes"])
    one = open_loop(model, ds, episodes, context=2, horizon=3, max_windows=6, depth=1, batch_size=4)
    two = open_loop(model, ds, episodes, context=2, horizon=3, max_windows=6, depth=3)
    digest = truth_digest(ds, one.window_rows, batch_size=4)
    assert digest == truth_digest(ds, two.window_rows) and len(digest) == 64  # batching does not change it
    longer = open_loop(model, ds, episodes, context=3, horizon=3, max_windows=6, depth=1)
    assert truth_digest(ds, longer.window_rows) != digest  # windows one step longer see other observations
    record = per_window_record(one, ds, [1, 3])
    assert record["truth_sha256"] == digest
    assert len(record["windows"]) == one.windows and set(record["errors"]) == {"1", "3"}
    np.testing.assert_allclose(record["errors"]["3"], one.window_errors[:, 2], rtol=1e-5)
