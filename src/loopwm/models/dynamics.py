"""The one interface every world model implements (looped, and later RSSM and deep baselines).

A model needs `initial` (start from a first observation) and `step` (predict the next observation
from the current one, true or predicted, and an action). `observe` (teacher forcing) and `imagine`
(open loop) are loops over `step`, shared here, so evaluation, planning and play all go through the
same `imagine` path whatever the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from loopwm.utils import LoopWMError


@dataclass
class State:
    """What a world model carries from one environment step to the next."""

    h: torch.Tensor  # (B, N_h, d) latent tokens after the previous step
    z: torch.Tensor | None  # (B, N_h, d) recurrent state to carry into the next loop, or None
    obs: torch.Tensor  # (B, N, F) current observation (true or predicted), raw units
    real: bool  # whether `obs` was observed rather than predicted


@dataclass
class Rollout:
    """Per-step outputs of `observe` / `imagine`, stacked over time."""

    obs: torch.Tensor  # (B, T, N, F) predicted next observations
    reward: torch.Tensor  # (B, T)
    cont_logit: torch.Tensor  # (B, T) continuation logits
    iterations: torch.Tensor  # (B, T) loop iterations used (1 for models without a loop)
    token_iterations: torch.Tensor  # (B, T) iterations per token; differs only for per-token exits


def body_squared_error(model, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Squared error over each feature's training variance, summed over the features that change:
    (..., N, F) predictions and truth -> (..., N), not yet divided by their count."""
    return (((pred - true) / model.std_safe) ** 2 * model.dynamic).sum(-1)  # (..., N)


def normalised_error(model, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Squared error over each feature's training variance, averaged over entities and over the
    features that change: (..., N, F) predictions and truth -> (...). Shared by training and evaluation."""
    return body_squared_error(model, pred, true).mean(-1) / model.dynamic.sum()  # (...)


def reward_error(model, pred: torch.Tensor, true: torch.Tensor, units: str = "raw") -> torch.Tensor:
    """Mean squared reward error (any matching shapes -> scalar), in the environment's units ("raw")
    or in units of the training rewards' standard deviation ("standard"). Shared by the objectives."""
    err = ((pred - true.to(pred.dtype)) ** 2).mean()
    return err / model.reward_std**2 if units == "standard" else err


def reward_loss_scale(model, n_entities: int, units: str = "raw") -> torch.Tensor | float:
    """What multiplies the reward weight in the loss. In standard units the reward error is weighed
    like one more observed value: the observation loss is a mean over n_entities x (changing
    features) values, so one value's share of it is 1 / that count (the balance of DreamerV3's
    losses, which sum the decoder's error over every value and add the reward's once). A tensor,
    so the training step never waits on the device for it."""
    if units != "standard":
        return 1.0
    return 1.0 / (model.dynamic.sum() * n_entities).clamp(min=1)


class Dynamics:
    """Mixin giving `observe` and `imagine` to any model with `initial`, `step` and `_as_entities`."""

    @property
    def reward_mean(self) -> float:
        """The reward head predicts in units of reward_std around this (both from the world spec)."""
        return self.spec.reward_mean

    @property
    def reward_std(self) -> float:
        return self.spec.reward_std

    def initial(self, obs: torch.Tensor) -> State:  # pragma: no cover - implemented by models
        raise NotImplementedError

    def step(self, state: State, action: torch.Tensor, depth: Any = None, exit_rule: Any = None, latent: bool = False
             ) -> tuple[State, dict]:
        raise NotImplementedError  # pragma: no cover

    # ----- input checks at the public entry points (a clear message, not an error deep in torch) -----
    any_entity_count = False
    """True for models whose tokens are the bodies themselves (one per row of an (N, F) observation),
    which therefore run on scenes with more or fewer bodies than they were trained on."""

    def check_obs(self, obs: torch.Tensor, lead: int, what: str = "observations") -> None:
        """obs must be (*lead dims, *obs_shape) or the entity form (*lead dims, N, F), finite."""
        spec = self.spec
        entity = (spec.n_entities, spec.n_features)
        if not isinstance(obs, torch.Tensor):
            raise LoopWMError(f"{what} must be a torch.Tensor, got {type(obs).__name__}")
        tail = tuple(obs.shape[lead:])
        if self.any_entity_count and len(spec.obs_shape) == 2 and len(tail) == 2 and tail[1] == spec.n_features and tail[0] >= 1:
            tail = entity  # an entity model runs on any number of bodies
        if obs.dim() < lead or tail not in (tuple(spec.obs_shape), entity):
            raise LoopWMError(f"{what} have shape {tuple(obs.shape)}; this model expects {lead} leading dims then "
                              f"{tuple(spec.obs_shape)} (the dataset's observation shape)")
        if not (obs.dtype.is_floating_point or obs.dtype == torch.uint8):
            raise LoopWMError(f"{what} have dtype {obs.dtype}; pass floating-point values (or uint8 frames)")
        if obs.dtype.is_floating_point and not bool(torch.isfinite(obs).all()):
            raise LoopWMError(f"{what} contain NaN or infinite values; clean the input (the model cannot predict from them)")

    def check_actions(self, actions: torch.Tensor, lead: int) -> None:
        """actions must be (*lead dims, *action_shape), finite and inside the action space."""
        spec = self.spec
        shape = () if spec.action_kind == "discrete" else None
        if not isinstance(actions, torch.Tensor):
            raise LoopWMError(f"actions must be a torch.Tensor, got {type(actions).__name__}")
        n = int(torch.tensor(actions.shape[lead:]).prod()) if actions.dim() > lead else 1
        if actions.dim() < lead or (shape == () and actions.dim() != lead) or (shape is None and n != spec.action_dim):
            want = "no further dims (one integer per step)" if shape == () else f"{spec.action_dim} values per step"
            raise LoopWMError(f"actions have shape {tuple(actions.shape)}; this model expects {lead} leading dims then {want}")
        if spec.action_kind == "discrete":
            if actions.dtype.is_floating_point and not bool((actions == actions.round()).all()):
                raise LoopWMError("discrete actions must be whole numbers")
            lo, hi = spec.action_start, spec.action_start + spec.action_dim
            if actions.numel() and (int(actions.min()) < lo or int(actions.max()) >= hi):
                raise LoopWMError(f"discrete actions must lie in [{lo}, {hi}); got values from {int(actions.min())} to {int(actions.max())}")
            return
        a = actions.float().reshape(*actions.shape[:lead], -1)  # (..., A)
        if not bool(torch.isfinite(a).all()):
            raise LoopWMError("actions contain NaN or infinite values")
        for i, (lo, hi) in enumerate(zip(spec.action_low, spec.action_high)):
            col = a[..., i]
            if (lo is not None and bool((col < lo - 1e-5).any())) or (hi is not None and bool((col > hi + 1e-5).any())):
                raise LoopWMError(f"action component {i} leaves the action space [{lo}, {hi}] (got {float(col.min()):.4g} "
                                  f"to {float(col.max()):.4g}); clip actions to the environment's bounds")

    def observe(self, state: State, actions: torch.Tensor, next_obs: torch.Tensor, depth=None, exit_rule=None
                ) -> tuple[State, Rollout]:
        """Teacher forcing: T steps, each predicting next_obs[:, t] from the true past.

        next_obs is (B, T, *obs_shape) as the environment gives it, or already (B, T, N, F)."""
        self.check_obs(next_obs, 2, "next_obs")
        self.check_actions(actions, 2)
        if actions.shape[:2] != next_obs.shape[:2]:
            raise LoopWMError(f"actions {tuple(actions.shape[:2])} and next_obs {tuple(next_obs.shape[:2])} must agree on (batch, time)")
        next_obs = (next_obs if next_obs.dim() == 4 else self._as_entities(next_obs)).float()  # (B, T, N, F)
        outs = []
        for t in range(actions.shape[1]):
            state, out = self.step(state, actions[:, t], depth, exit_rule)
            outs.append(out)
            state = State(h=state.h, z=state.z, obs=next_obs[:, t], real=True)
        return state, stack_outputs(outs)

    def imagine(self, state: State, actions: torch.Tensor, depth=None, exit_rule=None, latent: bool = False
                ) -> tuple[State, Rollout]:
        """Open loop: roll H steps forward under `actions` (B, H, ...) without observations.

        latent: deferred decoding's roll-out: the model never re-encodes its own predictions (it
        reads the learned no-observation token); the predictions are still returned, but only the
        last one is what a model trained with --objective dd was taught to decode."""
        self.check_actions(actions, 2)
        if actions.shape[0] != state.obs.shape[0]:
            raise LoopWMError(f"actions have batch {actions.shape[0]} but the state has batch {state.obs.shape[0]}")
        outs = []
        for t in range(actions.shape[1]):
            state, out = self.step(state, actions[:, t], depth, exit_rule, latent=latent)
            outs.append(out)
        return state, stack_outputs(outs)

    def read(self, obs: torch.Tensor, actions: torch.Tensor | None = None, depth=None, exit_rule=None) -> State:
        """The state after reading real observations obs (B, k+1, ...) and the k actions (B, k, ...)
        between them, as a training window's context is read: start from o_0, teacher-force the rest.
        k may be 0 (actions None or empty): the state of the first observation alone."""
        state = self.initial(obs[:, 0])
        if obs.shape[1] > 1:
            state, _ = self.observe(state, actions[:, : obs.shape[1] - 1], obs[:, 1:], depth, exit_rule)
        return state

    @torch.no_grad()
    def track(self, obs: torch.Tensor, actions: torch.Tensor, context: int, depth=None, exit_rule=None,
              chunk: int = 512) -> Rollout:
        """One-step predictions along a real trajectory, each read as training reads a window: the
        prediction of o_{t+1} comes from the last `context` real observations o_{t-context+1} .. o_t
        (fewer at the start), never from a state filtered over the whole history. A model trained
        with --context C and then fed hundreds of real observations reads out of distribution: on
        the 32-disc rail its one-step error after 10 observations is 2.5x that after 2.

        obs (B, T+1, *obs_shape) or (B, T+1, N, F); actions (B, T, ...) -> Rollout over T steps."""
        if context < 1:
            raise LoopWMError(f"context {context} reads no observation: use 1 or more")
        self.check_obs(obs, 2, "obs")
        self.check_actions(actions, 2)
        obs = (obs if obs.dim() == 4 else self._as_entities(obs)).float()  # (B, T+1, N, F)
        B, T = actions.shape[:2]
        C = min(context, T)
        outs: list[dict] = []
        for t in range(C - 1):  # the first steps read every observation so far: o_0 .. o_t
            state = self.read(obs[:, : t + 1], actions[:, :t], depth, exit_rule)
            outs.append(self.step(state, actions[:, t], depth, exit_rule)[1])
        if T >= C:  # every later step from a full window of C observations, batched over time
            W = T - C + 1  # windows starting at s = 0 .. T-C, predicting o_{s+C}
            ob = obs[:, : W + C - 1].unfold(1, C, 1).movedim(-1, 2)  # (B, W, C, N, F)
            ac = actions.unfold(1, C, 1)  # (B, W, *A, C)
            ac = ac.movedim(-1, 2)  # (B, W, C, *A)
            ob, ac = ob.flatten(0, 1), ac.flatten(0, 1)  # (B*W, C, N, F), (B*W, C, *A)
            parts = []
            for i in range(0, ob.shape[0], chunk):
                o, a = ob[i : i + chunk], ac[i : i + chunk]
                state = self.read(o, a[:, : C - 1], depth, exit_rule)
                parts.append(self.step(state, a[:, C - 1], depth, exit_rule)[1])
            keys = ["obs", "reward", "cont_logit", "iterations"] + (["token_iterations"] if "token_iterations" in parts[0] else [])
            joined = {k: torch.cat([p[k] for p in parts]).unflatten(0, (B, W)) for k in keys}  # (B, W, ...)
            outs += [{k: v[:, w] for k, v in joined.items()} for w in range(W)]
        return stack_outputs(outs)


def stack_outputs(outs: list[dict[str, torch.Tensor]]) -> Rollout:
    return Rollout(
        obs=torch.stack([o["obs"] for o in outs], dim=1),  # (B, T, N, F)
        reward=torch.stack([o["reward"] for o in outs], dim=1),  # (B, T)
        cont_logit=torch.stack([o["cont_logit"] for o in outs], dim=1),  # (B, T)
        iterations=torch.stack([o["iterations"] for o in outs], dim=1),  # (B, T)
        token_iterations=torch.stack([o.get("token_iterations", o["iterations"]).float() for o in outs], dim=1),  # (B, T)
    )
