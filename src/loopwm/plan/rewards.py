"""Known reward functions: plan with the task's own reward of imagined observations.

A world model's reward head is one more thing it can get wrong, and it is the thing a planner
ranks candidates by. Where the reward is a known function of the observation and the action (most
control benchmarks; PETS and mbrl-lib plan this way), a planner can score the model's predicted
observations with that function instead, so that planning measures the dynamics alone:

    loopwm plan --model runs/reacher --reward known                  # the task's function below
    loopwm plan --model runs/mine --reward mypackage.rewards:mine    # your own

A reward function takes batches (obs (K, *obs_shape): the observation each action is taken in;
action (K, *action_shape); next_obs (K, *obs_shape): the one it leads to) and returns (K,) rewards.
Each function here is checked against its environment's own rewards on real transitions (tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from loopwm.utils import LoopWMError

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pendulum_v1(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Gymnasium Pendulum-v1: -(theta^2 + 0.1 theta_dot^2 + 0.001 u^2) in the state the torque is applied in;
    obs is (cos theta, sin theta, theta_dot), theta wrapped to [-pi, pi)."""
    theta = torch.atan2(obs[..., 1], obs[..., 0])  # (K,) already in (-pi, pi]
    torque = action.reshape(action.shape[0], -1)[..., 0].clamp(-2.0, 2.0)  # (K,)
    return -(theta**2 + 0.1 * obs[..., 2] ** 2 + 0.001 * torque**2)


def reacher_v5(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Gymnasium Reacher-v5: -|fingertip - target| after the step - |action|^2; the last two
    observation features are the fingertip-to-target vector."""
    distance = next_obs[..., -2:].norm(dim=-1)  # (K,)
    return -distance - (action.reshape(action.shape[0], -1) ** 2).sum(-1)


def push_v0(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """The built-in loopwm/Push-v0: -|ball 1 - (0.5, 0.5)| - 0.2 * max(0, surface gap from disc 0 to
    ball 1), after the step; observations are (bodies, features) with x, y first and the radius fifth."""
    ball, disc = next_obs[..., 1, :], next_obs[..., 0, :]  # (K, F) each
    to_goal = (ball[..., :2] - 0.5).norm(dim=-1)  # (K,)
    gap = (ball[..., :2] - disc[..., :2]).norm(dim=-1) - ball[..., 4] - disc[..., 4]  # (K,)
    return -to_goal - 0.2 * gap.clamp(min=0.0)


KNOWN_REWARDS: dict[str, RewardFn] = {"Pendulum-v1": pendulum_v1, "Reacher-v5": reacher_v5, "loopwm/Push-v0": push_v0}


def resolve_reward(spec: str, env_id: str | None) -> RewardFn | None:
    """"" -> None (the model's reward head); "known" -> the function for env_id above;
    "package.module:function" -> that function, imported."""
    if not spec:
        return None
    if spec == "known":
        if env_id not in KNOWN_REWARDS:
            raise LoopWMError(f"no known reward function for {env_id!r} (known: {', '.join(KNOWN_REWARDS)}): pass "
                              "--reward package.module:function with your own, or leave --reward empty for the "
                              "model's reward head")
        return KNOWN_REWARDS[env_id]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LoopWMError(f"--reward {spec!r} is not 'known' or 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise LoopWMError(f"cannot load the reward function {spec!r} ({err}): check the module is importable "
                          "(on PYTHONPATH) and defines that function") from None
    if not callable(fn):
        raise LoopWMError(f"{spec!r} is not a function")
    return fn


def rewards_of(fn: RewardFn, first: torch.Tensor, actions: torch.Tensor, predicted: torch.Tensor,
               obs_shape: tuple[int, ...]) -> torch.Tensor:
    """Rewards of K imagined sequences of H steps under a known function.

    first: (K, *obs_shape) the observation the first action is taken in; actions (K, H, *A);
    predicted (K, H, ...) the imagined observation after each action -> (K, H) rewards."""
    K, H = actions.shape[:2]
    after = predicted.reshape(K, H, *obs_shape)  # (K, H, *obs_shape)
    before = torch.cat([first.reshape(K, 1, *obs_shape), after[:, :-1]], dim=1)  # (K, H, *obs_shape)
    flat = lambda x: x.reshape(K * H, *x.shape[2:])  # noqa: E731 - (K, H, ...) -> (K*H, ...)
    out = fn(flat(before), flat(actions), flat(after))
    if not isinstance(out, torch.Tensor) or out.shape != (K * H,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LoopWMError(f"the reward function returned {got}; it must return a tensor of one reward per "
                          f"transition ({K * H},)")
    return out.reshape(K, H).float()

