"""Draw an observation of a Gymnasium vector world with the environment's own renderer.

A world model predicts observations, not simulator states; to show a prediction the way the real
world looks, write it into a scratch copy of the environment and call its `render()`. That works
where the observation determines the rendered state: the classic-control worlds whose `state` is the
observation itself (CartPole, MountainCar), and those that observe angles as cosine and sine
(Pendulum, Acrobot). Other worlds get None and are shown another way.

    paint = state_painter("CartPole-v1")
    frame = paint(obs)        # (H, W, 3) uint8, or None where the world cannot be painted
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# observations holding angles as (cos, sin) pairs: obs index pairs -> the state's angle, then the
# observation values copied as they are (angular velocities)
_ANGLE_WORLDS = {
    "Pendulum": ([(0, 1)], [2]),
    "Acrobot": ([(0, 1), (2, 3)], [4, 5]),
}


def _state_from(name: str, obs: np.ndarray, size: int) -> np.ndarray | None:
    if name in _ANGLE_WORLDS:
        pairs, rest = _ANGLE_WORLDS[name]
        angles = [np.arctan2(obs[s], obs[c]) for c, s in pairs]
        return np.array(angles + [obs[i] for i in rest], dtype=np.float64)
    return obs.astype(np.float64) if obs.size == size else None


def state_painter(env_id: str, **env_kwargs) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function from one flat observation to an RGB frame drawn by the world's own renderer, or
    None where the observation does not determine what the renderer draws (or nothing renders)."""
    from loopwm.envs import make_env

    try:
        env = make_env(env_id, render_mode="rgb_array", **env_kwargs)
        env.reset(seed=0)
        base = env.unwrapped
        name = env_id.split("/")[-1].split("-")[0]
        if not type(base).__module__.startswith("gymnasium.envs.classic_control"):
            return None  # elsewhere a `state` attribute need not be what the observation holds
        if not hasattr(base, "state") or base.state is None or not np.all(np.isfinite(np.asarray(base.state, float))):
            return None
        size = int(np.size(base.state))
        if _state_from(name, np.zeros(env.observation_space.shape).reshape(-1), size) is None:
            return None
        frame = env.render()
        if frame is None or np.asarray(frame).ndim != 3:
            return None
    except Exception:  # noqa: BLE001 - no renderer (a missing extra, no display): the caller draws another way
        return None

    shape = np.shape(base.state)
    low = np.broadcast_to(env.observation_space.low, env.observation_space.shape).reshape(-1)
    high = np.broadcast_to(env.observation_space.high, env.observation_space.shape).reshape(-1)

    def paint(obs: np.ndarray) -> np.ndarray:
        flat = np.clip(np.nan_to_num(np.asarray(obs, dtype=np.float64).reshape(-1)), low, high)  # a prediction may stray
        base.state = _state_from(name, flat, size).reshape(shape)
        return np.asarray(env.render(), dtype=np.uint8)[..., :3]

    return paint
