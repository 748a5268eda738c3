"""Any Gymnasium environment, end to end: collect -> train -> evaluate, with both action kinds,
a user's own environment object, MuJoCo (when its extra is installed) and clear refusals."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from gymnasium import spaces

from loopwm.checkpoint import load_model
from loopwm.data import TrajectoryDataset, collect
from loopwm.eval.evaluate import EvalConfig, evaluate
from loopwm.models.world_model import ModelConfig
from loopwm.train.loop import TrainConfig, train
from loopwm.utils import LoopWMError

TINY = ModelConfig(d=16, n_heads=2, mu_rec=2.0)


def round_trip(tmp_path, env_id=None, env=None, episodes=6, horizon=12, **collect_kw):
    data = collect(env_id=env_id or "unused", env=env, out=str(tmp_path / "data"), episodes=episodes, progress=False,
                   shard_episodes=4, **collect_kw)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model=TINY, steps=3, batch_size=4, context=2,
                            horizon=3, warmup=1, eval_every=10**9, progress=False, device="cpu"))
    result = evaluate(EvalConfig(run=str(run), horizon=horizon, context=2, max_windows=16, rollout_steps=15, device="cpu"))
    return TrajectoryDataset.load(data), load_model(run, "cpu")[0], result


def test_discrete_actions_cartpole(tmp_path):
    ds, model, result = round_trip(tmp_path, "CartPole-v1", max_steps=40)
    assert ds.action_space == {**ds.action_space, "type": "discrete", "n": 2}
    assert model.spec.action_kind == "discrete" and model.spec.action_dim == 2
    feats = model._action_features(torch.tensor([0, 1, 1]))
    assert torch.equal(feats, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))  # one-hot
    assert all(np.isfinite(v) for v in result["open_loop_error"].values())
    json.dumps(result)  # the --json output stays valid JSON
    # continuation is trained on termination only: CartPole ends by terminating, the cap truncates
    assert ds.arrays["terminated"].any() or ds.arrays["truncated"].any()
    assert not (ds.arrays["terminated"] & ds.arrays["truncated"]).any()


def test_continuous_actions_pendulum_are_scaled_to_the_bounds(tmp_path):
    ds, model, result = round_trip(tmp_path, "Pendulum-v1", max_steps=30, horizon=50)
    assert model.spec.action_kind == "box" and model.spec.action_low == [-2.0] and model.spec.action_high == [2.0]
    feats = model._action_features(torch.tensor([[-2.0], [0.0], [2.0]]))
    assert torch.allclose(feats, torch.tensor([[-1.0], [0.0], [1.0]]))
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["stats"]["episodes"] == 6 and len(manifest["stats"]["obs_mean"]) == 3  # stats in the manifest
    assert np.allclose(manifest["stats"]["obs_mean"], ds.stats(range(6))["obs_mean"])
    # 30-step episodes leave 29 steps to predict after a context of 2 observations (o_0 and o_1)
    assert "30" not in result["open_loop_error"]
    assert "29" in result["open_loop_error"] and result["rollout_finite"]


class ShiftedCounter:
    """A user's own environment: no gymnasium base class, Discrete actions starting at -1."""

    observation_space = spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
    action_space = spaces.Discrete(3, start=-1)

    def reset(self, seed=None, options=None):
        self.rng = np.random.default_rng(seed)
        self.x = self.rng.normal(size=3).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.x = (0.9 * self.x + 0.1 * int(action)).astype(np.float32)
        return self.x.copy(), float(-abs(self.x).sum()), False, False, {}


def test_own_environment_object(tmp_path):
    ds, model, result = round_trip(tmp_path, env=ShiftedCounter(), max_steps=25)
    assert ds.env_id.startswith("python:") and ds.arrays["action"].min() >= -1 and ds.arrays["action"].max() <= 1
    assert model.spec.action_start == -1
    assert torch.equal(model._action_features(torch.tensor([-1, 1])), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(LoopWMError, match="discrete actions must lie in"):
        model._action_features(torch.tensor([2]))
    assert "rollout_steps" not in result  # the object cannot be re-made, so no real-vs-imagined replay
    with pytest.raises(LoopWMError, match="reset/step contract"):
        collect(env=object(), out=str(tmp_path / "x"), episodes=1, progress=False)


class DictObs(ShiftedCounter):
    observation_space = spaces.Dict({"x": spaces.Box(-1, 1, shape=(2,))})


class TextObs(ShiftedCounter):
    observation_space = spaces.Text(8)


class MultiDiscreteActions(ShiftedCounter):
    action_space = spaces.MultiDiscrete([2, 3])


@pytest.mark.parametrize("env_cls, space", [(DictObs, "Dict"), (TextObs, "Text"), (MultiDiscreteActions, "MultiDiscrete")])
def test_unsupported_spaces_are_named(tmp_path, env_cls, space):
    with pytest.raises(LoopWMError) as err:
        collect(env=env_cls(), out=str(tmp_path / "d"), episodes=1, progress=False)
    assert space in str(err.value) and "Box" in str(err.value)


def test_optional_packages_name_their_extra():
    from loopwm.envs import make_env

    if importlib.util.find_spec("ale_py") is None:
        with pytest.raises(LoopWMError, match=r"loopwm\[atari\]"):
            make_env("ALE/Pong-v5")
    with pytest.raises(LoopWMError, match="gymnasium does not know"):
        make_env("NoSuchTask-v3")


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None,
                    reason='MuJoCo is an optional extra: pip install "loopwm[mujoco]"')
def test_mujoco_task_vector_observations(tmp_path):
    ds, model, result = round_trip(tmp_path, "HalfCheetah-v5", episodes=3, max_steps=20)
    assert ds.obs_shape == (17,) and model.spec.action_dim == 6
    assert model.spec.action_low == [-1.0] * 6
    assert all(np.isfinite(v) for v in result["open_loop_error"].values())


@pytest.mark.parametrize("kind", ["looped", "deep", "rssm"])
def test_pixel_pipeline_shapes_and_outputs(tmp_path, kind):
    data = collect(env_id="loopwm/Balls-v0", obs="pixels", pixel_size=16, n_bodies=3, max_episode_steps=20,
                   out=str(tmp_path / "data"), episodes=3, progress=False)
    ds = TrajectoryDataset.load(data)
    assert ds.obs_shape == (16, 16, 3) and ds.arrays["obs"].dtype == np.uint8 and ds.kinematics is None
    assert ds.stats(range(3))["obs_mean"].shape == (3,)  # pooled over pixels: one value per channel
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model=ModelConfig(kind=kind, d=16, n_heads=2, mu_rec=2.0),
                            steps=2, batch_size=2, context=2, horizon=2, warmup=1, eval_every=10**9, progress=False, device="cpu"))
    model, _ = load_model(run, "cpu")
    assert model.spec.pixels and model.spec.n_entities == 256
    frames = torch.as_tensor(ds.batch(ds.windows([0], 3)[:2])["obs"])  # (B, L+1, H, W, C) uint8
    state = model.initial(frames[:, 0])
    assert state.obs.shape == (2, 256, 3)
    state, roll = model.observe(state, torch.as_tensor(ds.batch(ds.windows([0], 3)[:2])["action"]), frames[:, 1:])
    assert roll.obs.shape == (2, 3, 256, 3) and roll.obs.dtype == torch.float32
    assert float(roll.obs.detach().min()) >= 0 and float(roll.obs.detach().max()) <= 255  # frames stay valid images
    if kind != "rssm":
        assert state.h.shape == (2, 4 + model.cfg.n_global, 16)  # (16/8)^2 patch tokens + globals
    result = evaluate(EvalConfig(run=str(run), horizon=5, context=2, max_windows=4, rollout_steps=6,
                                 out=str(tmp_path / "eval"), gif_steps=4, device="cpu"))
    assert np.isfinite(result["open_loop_error"]["5"]) and (tmp_path / "eval" / "real_vs_imagined.gif").exists()
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["params"] == model.param_count()
