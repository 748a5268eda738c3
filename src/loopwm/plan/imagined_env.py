"""A trained world model as a Gymnasium environment, so any RL library can train a policy in it.

    env = ImaginedEnv("runs/pendulum")           # reset() starts from real start states
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

`step` is one imagined step of the model through `Dynamics.step`, the path evaluation and
planning take: the next observation is the model's prediction (clipped into the observation space),
the reward its reward head (or, with `reward="known"` or `reward="package.module:function"`, a known
reward function of the observations: loopwm.plan.rewards), and `terminated` is true when the continuation head gives the episode
less than `terminate_below` chance of going on. Episodes start from the first observations of the
run's dataset episodes and are cut at `max_episode_steps`.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from loopwm.plan.rewards import rewards_of
from loopwm.utils import LoopWMError


class ImaginedEnv(gym.Env):
    """Gymnasium environment whose dynamics are a trained loopwm world model."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, run: str | Path, data: str | Path | None = None, max_episode_steps: int = 200,
                 depth: int | None = None, exit: str = "auto", threshold: float = 0.0, terminate_below: float = 0.5,
                 device: str = "auto", render_mode: str | None = None, reward: str = ""):
        from loopwm.checkpoint import load_model
        from loopwm.data import TrajectoryDataset
        from loopwm.data.shards import space_from_description
        from loopwm.eval.evaluate import frame_renderer, resolve_exit
        from loopwm.eval.openloop import exit_rule_from
        from loopwm.plan.rewards import resolve_reward
        from loopwm.utils import pick_device

        if render_mode not in (None, "rgb_array"):
            raise LoopWMError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.device = pick_device(device)
        self.model, self.meta = load_model(run, self.device)
        data = Path(data or self.meta.get("data") or "")
        if not (data / "manifest.json").exists():
            raise LoopWMError(f"the run's dataset {str(data)!r} is not there to draw start states from: "
                              "pass data= (the folder `loopwm collect` wrote)")
        ds = TrajectoryDataset.load(data)
        self.observation_space = space_from_description(ds.observation_space)
        self.action_space = space_from_description(ds.action_space)
        if tuple(self.observation_space.shape) != tuple(self.model.spec.obs_shape):
            raise LoopWMError(f"dataset observations {self.observation_space.shape} do not match the model's "
                              f"{tuple(self.model.spec.obs_shape)}: pass the dataset the run was trained on")
        self.starts = np.stack([np.asarray(ds.episode(i)["obs"][0]) for i in range(len(ds))]).astype(np.float32)
        exit, threshold, depth = resolve_exit(run, exit, threshold, depth or 0)
        self.depth, self.exit_rule = depth or None, exit_rule_from(exit, threshold, self.model)
        self.max_episode_steps, self.terminate_below = int(max_episode_steps), float(terminate_below)
        self.render_mode = render_mode
        self.reward_fn = resolve_reward(reward, self.meta.get("env_id"))
        self._draw = frame_renderer(self.model, self.meta.get("env_id")) if render_mode == "rgb_array" else None
        self._low = np.broadcast_to(self.observation_space.low, self.observation_space.shape).astype(np.float32)
        self._high = np.broadcast_to(self.observation_space.high, self.observation_space.shape).astype(np.float32)
        self.state, self.obs, self.t = None, None, 0

    def _to_model(self, obs: np.ndarray) -> torch.Tensor:
        return self.model._as_entities(torch.as_tensor(obs, device=self.device).float()[None])  # (1, N, F)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.obs = self.starts[int(self.np_random.integers(len(self.starts)))].copy()
        with torch.no_grad():
            self.state = self.model.initial(self._to_model(self.obs))
        self.t = 0
        return self.obs.copy(), {}

    def step(self, action):
        if self.state is None:
            raise LoopWMError("call reset() before step()")
        if not self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)
                                          if self.action_space.shape else action):
            raise LoopWMError(f"action {action!r} is outside the action space {self.action_space}")
        act = torch.as_tensor(np.asarray(action), device=self.device)[None]  # (1, *A)
        before = self.obs
        with torch.no_grad():
            self.state, out = self.model.step(self.state, act, self.depth, self.exit_rule)
        pred = out["obs"][0].cpu().numpy().reshape(self.observation_space.shape)
        self.obs = np.clip(pred, self._low, self._high).astype(np.float32)
        reward = float(out["reward"][0])
        if self.reward_fn is not None:
            reward = float(rewards_of(self.reward_fn, torch.as_tensor(before)[None], act.cpu()[:, None],
                                      torch.as_tensor(self.obs)[None, None], self.observation_space.shape)[0, 0])
        self.t += 1
        cont = float(torch.sigmoid(out["cont_logit"][0]))
        terminated = cont < self.terminate_below
        truncated = self.t >= self.max_episode_steps and not terminated
        info = {"iterations": int(out["iterations"][0]), "continue_probability": cont}
        return self.obs.copy(), reward, bool(terminated), bool(truncated), info

    def render(self):
        if self.render_mode != "rgb_array" or self.obs is None:
            return None
        if self._draw is None:
            return np.zeros((64, 64, 3), dtype=np.uint8)  # a world whose states cannot be drawn
        return self._draw(self.model._as_entities(torch.as_tensor(self.obs).float()).numpy())
