"""What a planner imagines with: a trained world model, or copies of the true simulator.

Both expose the same three calls, so the control loop does not care which it holds:

    world.reset(obs)                  a new episode starts from a real observation
    world.observe(action, next_obs)   the real step just taken (the model re-reads its recent past)
    world.score(seqs)                 (K, H, *action) candidate sequences -> (K,) discounted returns

`LearnedWorld` goes through the model's `imagine`, the same path as evaluation: the K candidates
start from copies of the state read from the last `context` real observations (the model's
training context: a state filtered over a whole episode is one the model never trained on, and
predicts 2.5x worse on the rail after 10 observations than after 2), and a step's reward
counts with the probability that the episode is still running (the continuation head). Either
world can add a terminal value (`loopwm.plan.value`) of the last observation of each candidate,
discounted like a reward one step past the horizon.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import deque

import numpy as np
import torch

from loopwm.models.dynamics import State
from loopwm.plan.rewards import rewards_of
from loopwm.utils import LoopWMError


def expand_state(state: State, k: int) -> State:
    """K copies of a batch-1 state, one per candidate (tensors are expanded, not copied)."""
    def grow(x):
        return x.expand(k, *x.shape[1:]) if isinstance(x, torch.Tensor) and x.shape[:1] == (1,) else x
    return dataclasses.replace(state, **{f.name: grow(getattr(state, f.name)) for f in dataclasses.fields(state)})


def discounted_return(reward: torch.Tensor, cont_logit: torch.Tensor | None, discount: float,
                      terminal_value: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t discount^t * P(still running at t) * r_t for (K, H) rewards; the episode is running at
    step 0 and continues past step t with probability sigmoid(cont_logit_t). A (K,) terminal value
    (of the observation after the last step) adds discount^H * P(still running after step H-1) * V."""
    K, H = reward.shape
    weight = discount ** torch.arange(H + 1, device=reward.device, dtype=reward.dtype)  # (H+1,)
    if cont_logit is not None:
        alive = torch.cumprod(torch.sigmoid(cont_logit), dim=1)  # (K, H): running after step t
        alive = torch.cat([torch.ones_like(alive[:, :1]), alive], dim=1)  # (K, H+1): running at step t
        weight = weight * alive
    else:
        weight = weight.expand(K, H + 1)
    total = (weight[:, :H] * reward).sum(1)  # (K,)
    if terminal_value is not None:
        total = total + weight[:, H] * terminal_value
    return total


class LearnedWorld:
    """Plan inside a trained world model (any `Dynamics`)."""

    def __init__(self, model, depth: int | None = None, exit_rule=None, discount: float = 0.99, deferred: bool = False,
                 value=None, reward_fn=None, context: int = 4):
        self.model, self.depth, self.exit_rule, self.discount = model.eval(), depth, exit_rule, float(discount)
        if context < 1:
            raise LoopWMError(f"context {context} reads no observation: use 1 or more (the run's training --context)")
        self.context = int(context)  # real observations the state is read from, as in training
        self.reward_fn = reward_fn  # a known reward of (obs, action, next_obs), used instead of the reward head
        self.deferred = bool(deferred)  # candidates rolled in latent space, never re-encoding a prediction
        self.value = value  # a terminal value of the last predicted observation, or None
        self.device = next(model.parameters()).device  # wherever the model was loaded
        self.imagined_steps, self.iterations, self.seconds = 0, 0.0, 0.0

    def _obs(self, obs) -> torch.Tensor:
        return self.model._as_entities(torch.as_tensor(np.asarray(obs), device=self.device).float()[None])  # (1, N, F)

    def _act(self, action) -> torch.Tensor:
        return torch.as_tensor(np.asarray(action), device=self.device)[None, None]  # (1, 1, *A)

    @torch.no_grad()
    def reset(self, obs) -> None:
        self.recent_obs, self.recent_act = deque([self._obs(obs)], maxlen=self.context), deque(maxlen=self.context - 1)
        self.state = self.model.initial(self.recent_obs[0])

    @torch.no_grad()
    def observe(self, action, next_obs) -> None:
        self.recent_obs.append(self._obs(next_obs))
        self.recent_act.append(self._act(action))  # kept only while context > 1 (maxlen C - 1)
        obs = torch.stack(list(self.recent_obs), 1)  # (1, k+1, N, F), k+1 <= C
        acts = torch.cat(list(self.recent_act), 1) if self.recent_act else None  # (1, k, *A)
        self.state = self.model.read(obs, acts, self.depth, self.exit_rule)

    @torch.no_grad()
    def score(self, seqs: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        K, H = seqs.shape[:2]
        _, roll = self.model.imagine(expand_state(self.state, K), seqs.to(self.device), depth=self.depth,
                                     exit_rule=self.exit_rule, latent=self.deferred)
        tail = None
        if self.value is not None:  # the last prediction, (K, N, F) -> (K, *obs_shape) as the value reads it
            tail = self.value(roll.obs[:, -1].reshape(K, *self.model.spec.obs_shape))  # (K,)
        reward = roll.reward  # (K, H) from the reward head
        if self.reward_fn is not None:
            reward = rewards_of(self.reward_fn, self.state.obs.expand(K, *self.state.obs.shape[1:]), seqs.to(self.device),
                                roll.obs, tuple(self.model.spec.obs_shape))
        returns = discounted_return(reward, roll.cont_logit, self.discount, tail)
        self.seconds += time.perf_counter() - t0
        self.imagined_steps += K * H
        self.iterations += float(roll.iterations.float().sum())
        return returns


class OracleWorld:
    """Plan with copies of the true simulator: the ceiling any learned model is measured against.

    Each candidate runs in a copy of the real environment taken at decision time (a deep copy of
    the unwrapped environment; MuJoCo environments are restored from qpos/qvel into one scratch
    copy instead, since their simulator handles do not deep-copy)."""

    def __init__(self, env, discount: float = 0.99, scratch_factory=None, value=None):
        self.env, self.discount, self.value = env, float(discount), value
        self.scratch_factory = scratch_factory
        self.imagined_steps, self.iterations, self.seconds = 0, 0.0, 0.0
        self._scratch = None

    def reset(self, obs) -> None:
        pass

    def observe(self, action, next_obs) -> None:
        pass

    def _copies(self, k: int):
        real = self.env.unwrapped
        data = getattr(real, "data", None)
        if data is not None and hasattr(real, "set_state") and hasattr(data, "qpos"):  # MuJoCo
            if self._scratch is None:
                self._scratch = self.scratch_factory().unwrapped if self.scratch_factory else copy.deepcopy(real)
                self._scratch.reset(seed=0)
            qpos, qvel = data.qpos.copy(), data.qvel.copy()
            for _ in range(k):
                self._scratch.set_state(qpos, qvel)
                yield self._scratch
            return
        for _ in range(k):
            yield copy.deepcopy(real)

    def score(self, seqs: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        seqs_np = seqs.cpu().numpy()
        K, H = seqs_np.shape[:2]
        returns = np.zeros(K)
        tails, tail_weight = [], np.zeros(K)  # the last observation of each candidate still running
        for i, sim in enumerate(self._copies(K)):
            weight, terminated = 1.0, False
            for t in range(H):
                action = seqs_np[i, t]
                action = int(action) if seqs_np.dtype.kind in "iu" else action.astype(np.float32)
                obs, reward, terminated, _, _ = sim.step(action)
                returns[i] += weight * float(reward)
                self.imagined_steps += 1
                if terminated:
                    break
                weight *= self.discount
            if self.value is not None:
                tails.append(np.asarray(obs, dtype=np.float32))
                tail_weight[i] = 0.0 if terminated else weight
        if self.value is not None:  # one batched call for every candidate's terminal value
            with torch.no_grad():
                last = torch.as_tensor(np.stack(tails), device=self.value.obs_mean.device)  # (K, *obs_shape)
                returns += tail_weight * self.value(last).cpu().numpy()
        self.seconds += time.perf_counter() - t0
        return torch.as_tensor(returns, dtype=torch.float32)
