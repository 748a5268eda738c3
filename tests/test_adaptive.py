"""Adaptive depth: the learned exit gate, its training signal, and where iterations go."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from loopwm.data import collect
from loopwm.eval.evaluate import EvalConfig, evaluate
from loopwm.eval.openloop import open_loop, spearman
from loopwm.models.exits import make_exit_rule
from loopwm.models.world_model import ModelConfig
from loopwm.train.losses import gate_loss, gate_targets
from loopwm.train.loop import TrainConfig, train
from loopwm.utils import LoopWMError
from tests.test_model import random_obs, small_model


def test_gate_targets_say_stop_once_later_iterations_stop_helping():
    # per-iteration errors of two samples over 4 iterations
    losses = torch.tensor([[1.0, 1.0], [0.5, 0.99], [0.495, 0.98], [0.494, 0.97]])
    target = gate_targets(losses, tolerance=0.02)
    # sample 0: 1.0 -> 0.5 is worth continuing; after iteration 2 nothing gains more than 2%
    assert target[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    # sample 1: 0.99 -> 0.97 is a 2.02% gain, so iteration 2 is "continue"; 0.98 -> 0.97 is 1.02%
    assert target[:, 1].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_gate_loss_value_and_gradient_on_a_hand_made_example():
    losses = torch.tensor([[1.0], [0.5]])  # iteration 1 halves the error: target (0, 1)
    gates = torch.tensor([[0.2], [0.9]], requires_grad=True)
    value = gate_loss(losses, gates, tolerance=0.02, entropy_weight=0.1)
    bce = -(math.log(0.8) + math.log(0.9)) / 2
    entropy = (-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)) - (0.9 * math.log(0.9) + 0.1 * math.log(0.1))) / 2
    assert value.item() == pytest.approx(bce - 0.1 * entropy, rel=1e-5)
    value.backward()
    assert gates.grad[0, 0] > 0 and gates.grad[1, 0] < 0  # lower the early gate, raise the late one


def test_gate_threshold_limits_and_missing_gate():
    model = small_model(exit_gate=True).eval()
    obs, act = random_obs(3, 2), torch.rand(3, 4, 2)
    state = model.initial(obs[:, 0])
    _, fixed = model.imagine(state, act, depth=6)
    _, never = model.imagine(state, act, depth=6, exit_rule=make_exit_rule("gate", 1.0, model=model))
    _, always = model.imagine(state, act, depth=6, exit_rule=make_exit_rule("gate", 0.0, model=model))
    torch.testing.assert_close(fixed.obs, never.obs)
    assert bool((never.iterations == 6).all()) and bool((always.iterations == 1).all())
    with pytest.raises(LoopWMError, match="exit-gate"):
        make_exit_rule("gate", 0.5, model=small_model())


def test_batched_gate_rollouts_equal_per_sample_ones():
    model = small_model(exit_gate=True).eval()
    with torch.no_grad():  # a gate that actually varies between samples
        torch.nn.init.normal_(model.core.gate.proj.weight, std=2.0)
        model.core.gate.proj.weight[:, -1] = 1.0  # the latent-change input
        model.core.gate.proj.bias.zero_()
    obs, act = random_obs(4, 2, seed=3), torch.rand(4, 5, 2)
    rule = make_exit_rule("gate", 0.5, model=model)
    _, batched = model.imagine(model.initial(obs[:, 0]), act, depth=8, exit_rule=rule)
    assert batched.iterations.unique().numel() > 1  # the test means something only if depths differ
    for i in range(4):
        _, alone = model.imagine(model.initial(obs[i : i + 1, 0]), act[i : i + 1], depth=8, exit_rule=rule)
        torch.testing.assert_close(batched.obs[i : i + 1], alone.obs, atol=1e-5, rtol=1e-5)
        assert torch.equal(batched.iterations[i : i + 1], alone.iterations)


def test_training_outputs_every_iteration_when_the_gate_learns():
    model = small_model(exit_gate=True).train()
    obs, act = random_obs(2, 2), torch.rand(2, 2)
    _, out = model.step(model.initial(obs[:, 0]), act, depth=torch.tensor([3, 5]))
    assert out["obs_per_iteration"].shape == (5, 2, 4, 7) and out["gate"].shape == (5, 2)
    # the sample that stopped after 3 iterations repeats its final prediction afterwards
    torch.testing.assert_close(out["obs_per_iteration"][2, 0], out["obs_per_iteration"][4, 0])
    torch.testing.assert_close(out["obs_per_iteration"][-1], out["obs"])
    with pytest.raises(LoopWMError, match="kind looped"):
        small_model(kind="deep", exit_gate=True)


def test_spearman_against_known_rankings():
    assert spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([2, 2, 2], [1, 2, 3]) is None
    # tied ranks (0, 1.5, 1.5, 3) against (0, 2, 1, 3): Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)


def test_gate_model_trains_and_reports_where_iterations_go(tmp_path):
    data = collect(env_id="loopwm/Cradle-v0", n_bodies=4, max_episode_steps=30, out=str(tmp_path / "data"),
                   episodes=6, progress=False)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), steps=3, batch_size=4, context=2, horizon=3,
                            warmup=1, eval_every=10**9, progress=False, device="cpu", depth_supervision=0.5,
                            model=ModelConfig(d=16, n_heads=2, mu_rec=3.0, exit_gate=True)))
    first = [line for line in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert '"train/gate"' in first and '"train/every_iteration"' in first
    result = evaluate(EvalConfig(run=str(run), exit="gate", threshold=0.5, horizon=5, context=2, max_windows=8,
                                 rollout_steps=40, device="cpu"))
    assert result["exit_rule"] == "gate" and result["threshold"] == 0.5
    assert "iterations_event_spearman" in result and "iterations_solver_spearman" in result
    for key in ("iterations_event_spearman", "iterations_solver_spearman"):
        assert result[key] is None or -1.0 <= result[key] <= 1.0
    assert np.isfinite(result["open_loop_error"]["5"])


def test_adaptive_measurements_on_a_tiny_model(tmp_path):
    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset
    from loopwm.eval.adaptive import depth_by_difficulty, error_by_sweeps, exit_sweep, one_step_errors, sweep_stratum, wallclock

    data = collect(env_id="loopwm/Chain-v0", n_bodies=4, max_episode_steps=25, out=str(tmp_path / "data"),
                   episodes=4, progress=False)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), steps=2, batch_size=4, context=2, horizon=2,
                            warmup=1, eval_every=10**9, progress=False, device="cpu",
                            model=ModelConfig(d=16, n_heads=2, mu_rec=2.0, exit_gate=True)))
    model, meta = load_model(run, "cpu")
    assert meta["device"] == "cpu"  # the run records where it trained
    ds = TrajectoryDataset.load(data)
    one = one_step_errors(model, ds, [0, 1], context=2, depth=3, max_windows=20)
    assert one["error"].shape == one["iterations"].shape == one["solver_iterations"].shape == (20,)
    assert (one["iterations"] == 3).all() and np.isfinite(one["error"]).all()
    rows = depth_by_difficulty(model, ds, [0, 1], depths=[1, 2], context=2)
    assert {r["group"] for r in rows} <= {"easy", "middle", "hard"} and {r["depth"] for r in rows} == {1, 2}
    sweep = exit_sweep(model, ds, [0, 1], {"delta": [1e9], "gate": [1.0]}, depths=[1, 3], max_depth=3, context=2)
    by = {(r["rule"], r["threshold"]): r for r in sweep}
    assert by[("delta", 1e9)]["mean_iterations"] == 1.0  # always fires: one iteration
    fixed3 = next(r for r in sweep if r["rule"] == "fixed" and r["max_depth"] == 3)
    assert by[("gate", 1.0)]["mean_iterations"] == 3.0 and by[("gate", 1.0)]["error_h10"] == pytest.approx(fixed3["error_h10"])
    # paired against the fixed depths on the same windows: a rule that never fires is fixed 3, gap 0 exactly
    assert by[("gate", 1.0)]["vs_round"] == by[("gate", 1.0)]["vs_max"] == {"depth": 3, "gap_h10": 0.0, "se_h10": 0.0}
    fixed1 = next(r for r in sweep if r["rule"] == "fixed" and r["max_depth"] == 1)
    always = by[("delta", 1e9)]
    assert always["vs_round"]["depth"] == 1 and always["vs_round"]["gap_h10"] == pytest.approx(0.0, abs=1e-6)
    assert always["vs_max"]["gap_h10"] == pytest.approx(fixed1["error_h10"] / fixed3["error_h10"] - 1, rel=1e-4)
    assert always["vs_equal_cost"]["depths"] == [1, 1] and always["vs_equal_cost"]["gap_h10"] == pytest.approx(0.0, abs=1e-6)
    b = ds.batch(ds.windows([0, 1], 5)[:6])
    t = wallclock(model, torch.as_tensor(b["obs"][:, 0]).float(), torch.as_tensor(b["action"]), 3,
                  make_exit_rule("delta", 1e9), batch=4, seconds=0.05)
    assert t["steps_per_s_fixed"] > 0 and t["steps_per_s_adaptive"] > 0 and t["mean_iterations_adaptive"] == 1.0
    strata = error_by_sweeps(model, ds, [0, 1], depths=[1, 2], context=2, max_windows=20)
    assert {r["depth"] for r in strata} == {1, 2}
    assert sum(r["windows"] for r in strata if r["depth"] == 1) == 20
    # the strata partition the steps: their weighted mean is the overall one-step error
    at1 = [r for r in strata if r["depth"] == 1]
    whole = one_step_errors(model, ds, [0, 1], context=2, depth=1, max_windows=20)
    assert sum(r["error_h1"] * r["windows"] for r in at1) / 20 == pytest.approx(float(whole["error"].mean()), rel=1e-5)
    assert all(sweep_stratum([r["solver_iterations_mean"]])[0] == r["sweeps"] for r in at1 if r["sweeps"] in ("0", "1"))
    # paired noise: zero at each stratum's best depth, and the spread of the per-window differences elsewhere
    at2 = one_step_errors(model, ds, [0, 1], context=2, depth=2, max_windows=20)
    for name in {r["sweeps"] for r in strata}:
        pair = {r["depth"]: r for r in strata if r["sweeps"] == name}
        best, other = sorted(pair, key=lambda d: pair[d]["error_h1"])
        assert pair[best]["paired_se"] == 0.0
        mask = np.array(sweep_stratum(whole["solver_iterations"])) == name
        diff = {1: whole["error"], 2: at2["error"]}[other][mask] - {1: whole["error"], 2: at2["error"]}[best][mask]
        want = diff.std(ddof=1) / np.sqrt(mask.sum()) if mask.sum() > 1 else 0.0
        assert pair[other]["paired_se"] == pytest.approx(float(want), rel=1e-4, abs=1e-9)
    # open-loop horizon 1 after a context of C observations is the one-step error after C observations,
    # on every window: both read o_0 .. o_{C-1}, as a training window with --context C does
    for context in (1, 2, 3):
        every = one_step_errors(model, ds, [0, 1], context=context, depth=2, max_windows=10**6)
        ol = open_loop(model, ds, [0, 1], context=context, horizon=1, max_windows=10**6, depth=2)
        assert ol.windows == len(every["error"]) == sum(ds.lengths[[0, 1]] - context + 1)
        assert float(ol.errors[0]) == pytest.approx(float(every["error"].mean()), rel=1e-5)
    with pytest.raises(LoopWMError, match="--context 1 or more"):
        open_loop(model, ds, [0, 1], context=0, horizon=1)


def test_sweep_strata_cover_every_count_once():
    from loopwm.eval.adaptive import sweep_stratum

    assert sweep_stratum([0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 250]) == [
        "0", "1", "2-3", "2-3", "4-7", "4-7", "8-15", "8-15", "16-31", "16-31", "32+", "32+"]


def test_a_kept_exit_rule_round_trips_and_a_broken_record_is_refused(tmp_path):
    from loopwm.eval.evaluate import default_exit, keep_exit

    assert default_exit(tmp_path) == {"exit_rule": "fixed", "threshold": 0.0, "depth": 0}
    keep_exit(tmp_path, "gate", 0.7, 12)
    assert default_exit(tmp_path / "checkpoints" / "step_00000010.json") == {"exit_rule": "gate", "threshold": 0.7, "depth": 12}
    (tmp_path / "exit.json").write_text('{"exit_rule": "gate"}')
    with pytest.raises(LoopWMError, match="not a valid exit-rule record"):
        default_exit(tmp_path)


@pytest.mark.parametrize("rule", ["token-delta", "pred-delta"])
def test_per_token_exit_that_never_fires_equals_fixed_depth_and_one_that_always_does_equals_one_pass(rule):
    model = small_model().eval()
    obs, act = random_obs(3, 2), torch.rand(3, 4, 2)
    state = model.initial(obs[:, 0])
    _, fixed = model.imagine(state, act, depth=6)
    _, never = model.imagine(state, act, depth=6, exit_rule=make_exit_rule(rule, 0.0))
    _, one = model.imagine(state, act, depth=1)
    _, always = model.imagine(state, act, depth=6, exit_rule=make_exit_rule(rule, 1e9))
    torch.testing.assert_close(fixed.obs, never.obs)
    assert bool((never.iterations == 6).all()) and bool((never.token_iterations == 6).all())
    torch.testing.assert_close(one.obs, always.obs)
    assert bool((always.iterations == 1).all()) and bool((always.token_iterations == 1).all())


def test_the_prediction_rule_stops_a_body_when_its_predicted_change_stops_moving():
    from loopwm.models.exits import PredictionDeltaExit

    rule = PredictionDeltaExit(threshold=0.1)
    preds = {0: torch.zeros(2, 3, 4), 1: torch.zeros(2, 3, 4), 2: torch.zeros(2, 3, 4)}
    preds[1][0, 0] = 1.0  # sample 0, body 0 moves between the first two readouts; sample 1 never does
    preds[2][0, 0] = 1.05  # ... and barely after that
    rule.bind(lambda z, rows: preds[int(z[0, 0, 0])][rows])  # the state's first entry says which readout
    rule.start(torch.zeros(2, 4, 8))
    state = lambda k: torch.full((2, 4, 8), float(k))  # noqa: E731 - 3 bodies + 1 global token
    rows = torch.arange(2)
    first = rule.should_stop(0, state(0), state(1), rows)
    assert first.tolist() == [[False, True, True, False], [True, True, True, True]]  # a global token waits for its bodies
    second = rule.should_stop(1, state(1), state(2), rows)
    assert second[0].tolist() == [True, True, True, True]  # a change of 0.05 < 0.1 per feature (RMS)
    with pytest.raises(LoopWMError, match="pred-delta"):
        PredictionDeltaExit(0.1).should_stop(0, state(0), state(1), rows)  # no model bound a readout


def test_a_settled_token_keeps_its_state_while_the_others_iterate():
    from loopwm.models.exits import ExitRule
    from loopwm.models.looped import LoopedCore

    class SettleToken0(ExitRule):  # token 0 of every sample settles after its first iteration
        per_token = True

        def should_stop(self, t, z_prev, z_new, rows):
            stop = torch.zeros(z_new.shape[:2], dtype=torch.bool)
            stop[:, 0] = True
            return stop

    torch.manual_seed(0)
    core = LoopedCore(d=16, n_heads=2).eval()
    e, z0 = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    traj: list = []
    z, used, work = core.iterate(e, z0, torch.full((2,), 4), exit_rule=SettleToken0(), trajectory=traj)
    assert used.tolist() == [4, 4]  # the other tokens never settle
    assert work.tolist() == pytest.approx([(1 + 4 * 4) / 5] * 2)  # token iterations per token
    for later in traj[2:]:
        torch.testing.assert_close(later[:, 0], traj[1][:, 0])  # frozen after iteration 1
    assert not torch.allclose(traj[2][:, 1], traj[1][:, 1])  # the rest still moves
    z1, _, _ = core.iterate(e, z0, torch.full((2,), 1))
    torch.testing.assert_close(z[:, 0], z1[:, 0])


@pytest.mark.parametrize("rule,threshold,attention", [("token-delta", 0.05, "full"), ("pred-delta", 0.05, "full"),
                                                       ("pred-delta", 0.05, "local")])
def test_batched_per_token_exits_equal_per_sample_ones(rule, threshold, attention):
    model = small_model(attention=attention).eval()
    obs, act = random_obs(4, 2, seed=5), torch.rand(4, 5, 2)
    rule = make_exit_rule(rule, threshold)
    _, batched = model.imagine(model.initial(obs[:, 0]), act, depth=10, exit_rule=rule)
    assert batched.token_iterations.unique().numel() > 1  # tokens settled at different times
    assert bool((batched.token_iterations <= batched.iterations).all())
    for i in range(4):
        _, alone = model.imagine(model.initial(obs[i : i + 1, 0]), act[i : i + 1], depth=10, exit_rule=rule)
        torch.testing.assert_close(batched.obs[i : i + 1], alone.obs, atol=1e-5, rtol=1e-5)
        assert torch.equal(batched.iterations[i : i + 1], alone.iterations)
        torch.testing.assert_close(batched.token_iterations[i : i + 1], alone.token_iterations)


def test_fixed_depth_path_equals_the_general_loop_in_evaluation_and_per_sample_depths_still_work():
    model = small_model().eval()
    obs, act = random_obs(3, 2), torch.rand(3, 5, 2)
    state = model.initial(obs[:, 0])
    with torch.no_grad():
        _, fast = model.imagine(state, act, depth=5)  # no rule: the fixed-depth path
        _, general = model.imagine(state, act, depth=5, exit_rule=make_exit_rule("delta", 0.0))  # never fires
        _, mixed = model.imagine(state, act, depth=torch.tensor([2, 5, 3]))  # per-sample depths: the general loop
    torch.testing.assert_close(fast.obs, general.obs)
    assert fast.iterations.tolist() == general.iterations.tolist() == [[5] * 5] * 3
    assert mixed.iterations[:, 0].tolist() == [2, 5, 3]
    with torch.no_grad():
        _, alone = model.imagine(model.initial(obs[1:2, 0]), act[1:2], depth=5)
    torch.testing.assert_close(mixed.obs[1], alone.obs[0])  # the depth-5 sample as if it ran alone


def test_settling_is_each_tokens_last_move_and_tracking_it_changes_nothing_else():
    model = small_model(mu_rec=3.0)
    model.train()
    obs = random_obs(2, 2)
    action = torch.zeros(2, model.spec.action_dim)

    def run(report: bool, depth: list[int]):
        model.report_settling = report
        torch.manual_seed(1)  # the loop's initial state is a random draw in training: the same one each run
        return model.step(model.initial(obs[:, 0]), action, depth=torch.tensor(depth))

    plain_state, plain = run(False, [3, 2])  # samples of different depths: each read at its own last iteration
    state, out = run(True, [3, 2])
    assert "settle" not in plain and out["settle"].shape == (2, state.z.shape[1])
    assert torch.equal(plain["obs"], out["obs"]) and torch.equal(plain_state.z, state.z)
    before, _ = run(False, [2, 1])  # the same loops stopped one iteration earlier
    by_hand = (state.z - before.z).norm(dim=-1) / state.z.norm(dim=-1)  # (B, N_h)
    assert torch.allclose(out["settle"], by_hand, rtol=1e-5, atol=1e-7)
    assert (out["settle"] > 0).all()


def test_settle_weight_adds_its_term_and_is_refused_where_there_is_no_loop(tmp_path):
    from loopwm.train.losses import sequence_loss

    model = small_model(mu_rec=3.0)
    model.train()
    batch = {"obs": random_obs(2, 4), "action": torch.zeros(2, 3, model.spec.action_dim),
             "reward": torch.zeros(2, 3), "terminated": torch.zeros(2, 3)}
    torch.manual_seed(0)
    base, logs0 = sequence_loss(model, batch, TrainConfig(context=2, horizon=2))
    model.report_settling = True
    torch.manual_seed(0)
    with_term, logs = sequence_loss(model, batch, TrainConfig(context=2, horizon=2, settle_weight=0.5))
    assert logs0["settle"] == 0.0 and logs["settle"] > 0
    assert with_term.item() == pytest.approx(base.item() + 0.5 * logs["settle"], rel=1e-5)
    with_term.backward()
    assert model.core.core.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    data = collect(env_id="loopwm/Cradle-v0", n_bodies=4, max_episode_steps=20, out=str(tmp_path / "data"),
                   episodes=4, progress=False)
    common = dict(data=str(data), steps=2, batch_size=4, context=2, horizon=2, warmup=1, eval_every=10**9,
                  progress=False, device="cpu")
    with pytest.raises(LoopWMError, match="--model.kind looped"):
        train(TrainConfig(out=str(tmp_path / "deep"), settle_weight=0.1, model=ModelConfig(d=16, n_heads=2, kind="deep"), **common))
    with pytest.raises(LoopWMError, match="0 \\(off\\) or positive"):
        train(TrainConfig(out=str(tmp_path / "neg"), settle_weight=-1.0, model=ModelConfig(d=16, n_heads=2), **common))
    with pytest.raises(LoopWMError, match="--settle-from"):
        train(TrainConfig(out=str(tmp_path / "late"), settle_weight=0.1, settle_from=1.5, model=ModelConfig(d=16, n_heads=2), **common))
    with pytest.raises(LoopWMError, match="give it a --settle-weight"):
        train(TrainConfig(out=str(tmp_path / "late"), settle_from=0.5, model=ModelConfig(d=16, n_heads=2), **common))
    common["steps"] = 4
    run = train(TrainConfig(out=str(tmp_path / "run"), settle_weight=0.1, settle_from=0.5,
                            model=ModelConfig(d=16, n_heads=2, mu_rec=2.0), **common))
    settle = [json.loads(line)["train/settle"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert settle[:2] == [0.0, 0.0] and all(v > 0 for v in settle[2:])  # the penalty starts halfway


def test_exit_training_draws_per_step_and_a_rule_that_never_fires_trains_as_full_depth(tmp_path):
    from loopwm.checkpoint import latest_checkpoint, read_checkpoint
    from loopwm.train.loop import training_exit

    cfg = TrainConfig(exit_training=0.1, exit_training_share=0.5, seed=3)
    draws = [training_exit(cfg, step) for step in range(400)]
    again = [training_exit(cfg, step) for step in range(400)]  # a resumed run draws the same, step by step
    assert [r and r.threshold for r in draws] == [r and r.threshold for r in again]
    on = [r.threshold for r in draws if r is not None]
    assert 0.4 < len(on) / 400 < 0.6 and all(0.01 <= t <= 0.1 for t in on)
    assert min(on) < 0.02 and max(on) > 0.05  # spread over the decade, not one value

    data = collect(env_id="loopwm/Cradle-v0", n_bodies=4, max_episode_steps=20, out=str(tmp_path / "data"),
                   episodes=4, progress=False)
    common = dict(data=str(data), steps=3, batch_size=4, context=2, horizon=2, warmup=1, eval_every=10**9,
                  progress=False, device="cpu", seed=0)
    model = ModelConfig(d=16, n_heads=2, mu_rec=3.0)

    def trained(name: str, **kw):
        run = train(TrainConfig(out=str(tmp_path / name), model=model, **common, **kw))
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return read_checkpoint(latest_checkpoint(run))[0], logs

    plain, _ = trained("plain")
    never, _ = trained("never", exit_training=1e-30, exit_training_share=1.0)  # no token ever moves this little
    assert plain.keys() == never.keys() and all(torch.equal(plain[k], never[k]) for k in plain)
    always, logs = trained("always", exit_training=1e9, exit_training_share=1.0)  # every token stops after one pass
    assert any(not torch.equal(plain[k], always[k]) for k in plain)
    assert all(r["train/token_iterations"] == 1.0 for r in logs if "train/token_iterations" in r)
    assert any("train/token_iterations" in r for r in logs)
    with pytest.raises(LoopWMError, match="--model.kind looped"):
        train(TrainConfig(out=str(tmp_path / "deep"), exit_training=0.1, model=ModelConfig(d=16, n_heads=2, kind="deep"),
                          **common))
    with pytest.raises(LoopWMError, match="--exit-training-share"):
        train(TrainConfig(out=str(tmp_path / "share"), exit_training=0.1, exit_training_share=0.0, model=model, **common))


def test_equal_cost_reference_mixes_the_bracketing_depths():
    from loopwm.eval.adaptive import equal_cost_reference

    fixed = {1: np.array([4.0, 2.0]), 2: np.array([2.0, 1.0]), 4: np.array([1.0, 1.0])}
    lo, hi, w, ref = equal_cost_reference(fixed, 2.5)  # a quarter of the way from 2 to 4
    assert (lo, hi) == (2, 4) and w == pytest.approx(0.25) and ref == pytest.approx([1.75, 1.0])
    assert equal_cost_reference(fixed, 2.0)[:3] == (2, 2, 0.0)  # on a scored depth: that depth alone
    assert equal_cost_reference(fixed, 9.0)[:2] == (4, 4) and equal_cost_reference(fixed, 0.5)[:2] == (1, 1)
    # round(M) jumps from depth 2 to 4 as M crosses 3; the equal-cost line moves smoothly
    below, above = equal_cost_reference(fixed, 2.99)[3], equal_cost_reference(fixed, 3.01)[3]
    assert np.abs(below - above).max() < 0.01
