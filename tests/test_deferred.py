"""Deferred decoding: the curriculum, the budget, what the roll-out reads, and training with it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from loopwm.train.deferred import budget_penalty, deferred_loss, dd_horizon, latent_travel
from loopwm.utils import LoopWMError
from tests.test_model import random_obs, small_model


def test_curriculum_grows_one_step_per_interval_up_to_k_max():
    assert [dd_horizon(s, 5, 100) for s in (0, 99, 100, 250, 399, 400, 10_000)] == [1, 1, 2, 3, 4, 5, 5]


def test_travel_and_budget_on_a_hand_made_example():
    h0 = torch.zeros(2, 1, 2)
    h1 = torch.tensor([[[3.0, 4.0]], [[0.0, 1.0]]])  # moves 5 and 1
    h2 = h1 + torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]])  # moves 1 and 0
    travel = latent_travel([h0, h1, h2])
    assert travel.tolist() == [6.0, 1.0]
    assert float(budget_penalty(travel, 2, 2.0)) == pytest.approx((6.0 - 4.0 + 0.0) / 2)  # only sample 0 over


def _batch(B=3, C=2, H=4, seed=0):
    obs = random_obs(B, C + H + 1, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return {"obs": obs, "action": torch.rand(B, C + H, 2, generator=g) * 2 - 1, "reward": torch.rand(B, C + H, generator=g),
            "terminated": torch.zeros(B, C + H)}


def _cfg(**kw):
    base = dict(context=2, horizon=4, dd_k_max=0, dd_interval=1, dd_consistency=0.1, dd_budget=0.01, dd_c_max=2.0,
                reward_weight=0.1, reward_units="raw", cont_weight=0.01)
    return SimpleNamespace(**{**base, **kw})


def test_k_of_one_is_per_step_decoding():
    model = small_model(consistency_head=True).eval()
    batch, cfg = _batch(), _cfg(dd_interval=10**9)
    _, info = deferred_loss(model, batch, cfg, step=0)
    assert info["dd_k"] == 1.0 and info["dd_consist"] == 0.0
    state = model.initial(batch["obs"][:, 0])
    state, _ = model.observe(state, batch["action"][:, :1], batch["obs"][:, 1:2])
    _, out = model.step(state, batch["action"][:, 1])
    err = ((out["obs"] - batch["obs"][:, 2]) / model.std_safe) ** 2 * model.dynamic
    assert info["obs"] == pytest.approx(float(err.sum(-1).mean().detach() / model.dynamic.sum()), rel=1e-5)


def test_the_latent_roll_out_never_reads_an_intermediate_observation():
    model = small_model(consistency_head=True).eval()
    batch, cfg = _batch(), _cfg()
    _, info = deferred_loss(model, batch, cfg, step=10**6)  # K = horizon = 4: o_2 .. o_4 are intermediate
    assert info["dd_k"] == 4.0
    moved = {k: v.clone() for k, v in batch.items()}
    moved["obs"][:, 2:5, :, :4] += 0.3  # shift every intermediate observation
    _, info2 = deferred_loss(model, moved, cfg, step=10**6)
    assert info2["obs"] == pytest.approx(info["obs"], rel=1e-6)  # the terminal prediction did not see them
    assert info2["dd_consist"] != pytest.approx(info["dd_consist"])  # but the consistency targets did
    moved["obs"][:, 5, :, :4] += 0.3  # the terminal observation itself (o_{C+K-1})
    _, info3 = deferred_loss(model, moved, cfg, step=10**6)
    assert info3["obs"] != pytest.approx(info["obs"])


def test_dd_needs_the_consistency_head_and_trains(tmp_path):
    from loopwm.checkpoint import load_model
    from loopwm.data import CollectConfig, collect
    from loopwm.models.world_model import ModelConfig
    from loopwm.train.loop import TrainConfig, train

    with pytest.raises(LoopWMError, match="consistency head"):
        deferred_loss(small_model().eval(), _batch(), _cfg(), step=0)
    data = collect(CollectConfig(env_id="loopwm/Balls-v0", out=str(tmp_path / "d"), episodes=4, n_bodies=3,
                                 max_episode_steps=30, progress=False))
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model=ModelConfig(d=16, n_heads=2, mu_rec=2.0), steps=6,
                      batch_size=4, context=2, horizon=3, objective="dd", dd_interval=2, eval_every=3, progress=False,
                      device="cpu", val_fraction=0.25)
    train(cfg)
    model, meta = load_model(tmp_path / "run")
    assert model.consistency is not None and meta["model"]["consistency_head"]
    import json

    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/dd_k"] for r in records] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert records[2]["val/dd_k"] == 3.0  # validated at the full deferral
    from loopwm.eval.evaluate import EvalConfig, evaluate

    per_step = evaluate(EvalConfig(run=str(tmp_path / "run"), horizon=5, max_windows=4, rollout_steps=5, context=2))
    deferred = evaluate(EvalConfig(run=str(tmp_path / "run"), horizon=5, max_windows=4, rollout_steps=5, context=2,
                                   decoding="deferred"))
    assert deferred["decoding"] == "deferred"
    assert deferred["open_loop_error"]["1"] == pytest.approx(per_step["open_loop_error"]["1"])  # K = 1 is the same
    assert deferred["open_loop_error"]["5"] != pytest.approx(per_step["open_loop_error"]["5"])
    with pytest.raises(LoopWMError, match="RSSM"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "r2"), model=ModelConfig(kind="rssm"), objective="dd",
                          steps=1, progress=False, device="cpu"))


def test_latent_imagination_reads_no_prediction_and_plans_the_same_way():
    from loopwm.plan import LearnedWorld

    model = small_model(consistency_head=True).eval()
    obs, act = random_obs(2, 1)[:, 0], torch.rand(2, 4, 2) * 2 - 1
    _, latent = model.imagine(model.initial(obs), act, depth=2, latent=True)
    _, fed = model.imagine(model.initial(obs), act, depth=2)
    torch.testing.assert_close(latent.obs[:, 0], fed.obs[:, 0])  # the first step reads the real observation
    assert not torch.allclose(latent.obs[:, 1:], fed.obs[:, 1:])  # later ones do not re-encode predictions
    world = LearnedWorld(model, depth=2, deferred=True)
    world.reset(obs[0].numpy())
    seqs = act[:1].expand(3, -1, -1)
    scores = world.score(seqs)
    _, alone = model.imagine(model.initial(obs[:1]), act[:1], depth=2, latent=True)
    from loopwm.plan import discounted_return

    torch.testing.assert_close(scores, discounted_return(alone.reward, alone.cont_logit, 0.99).expand(3))


def test_a_latent_step_is_counted_without_the_encoder():
    from loopwm.models.flops import count_step_flops

    model = small_model(consistency_head=True).eval()
    obs, act = random_obs(1, 1)[0, 0], torch.zeros(2)
    per_step, latent = count_step_flops(model, obs, act, depth=2), count_step_flops(model, obs, act, depth=2, latent=True)
    assert 0 < latent < per_step  # deferred decoding skips encoding the prediction, nothing else
    assert count_step_flops(model, obs, act, depth=3, latent=True) > latent  # iterations still count
