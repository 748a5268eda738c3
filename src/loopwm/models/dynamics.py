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


class Dynamics:
    """Mixin giving `observe` and `imagine` to any model with `initial`, `step` and `_as_entities`."""

    def initial(self, obs: torch.Tensor) -> State:  # pragma: no cover - implemented by models
        raise NotImplementedError

    def step(self, state: State, action: torch.Tensor, depth: Any = None, exit_rule: Any = None) -> tuple[State, dict]:
        raise NotImplementedError  # pragma: no cover

    def observe(self, state: State, actions: torch.Tensor, next_obs: torch.Tensor, depth=None, exit_rule=None
                ) -> tuple[State, Rollout]:
        """Teacher forcing: T steps, each predicting next_obs[:, t] from the true past.

        next_obs is (B, T, *obs_shape) as the environment gives it, or already (B, T, N, F)."""
        next_obs = (next_obs if next_obs.dim() == 4 else self._as_entities(next_obs)).float()  # (B, T, N, F)
        outs = []
        for t in range(actions.shape[1]):
            state, out = self.step(state, actions[:, t], depth, exit_rule)
            outs.append(out)
            state = State(h=state.h, z=state.z, obs=next_obs[:, t], real=True)
        return state, stack_outputs(outs)

    def imagine(self, state: State, actions: torch.Tensor, depth=None, exit_rule=None) -> tuple[State, Rollout]:
        """Open loop: roll H steps forward under `actions` (B, H, ...) without observations."""
        outs = []
        for t in range(actions.shape[1]):
            state, out = self.step(state, actions[:, t], depth, exit_rule)
            outs.append(out)
        return state, stack_outputs(outs)


def stack_outputs(outs: list[dict[str, torch.Tensor]]) -> Rollout:
    return Rollout(
        obs=torch.stack([o["obs"] for o in outs], dim=1),  # (B, T, N, F)
        reward=torch.stack([o["reward"] for o in outs], dim=1),  # (B, T)
        cont_logit=torch.stack([o["cont_logit"] for o in outs], dim=1),  # (B, T)
        iterations=torch.stack([o["iterations"] for o in outs], dim=1),  # (B, T)
    )
