"""The built-in world: a seeded 2D physics simulator with a Gymnasium interface.

Importing this package registers the Gymnasium ids in ``ENV_IDS``; ``make_env`` builds one (or any
other Gymnasium id) with errors that say what to do.

    from loopwm.envs import make_env
    env = make_env("loopwm/Cradle-v0", n_bodies=6, render_mode="rgb_array")
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from typing import Any

import gymnasium as gym

from loopwm.envs.physics import StepStats, World
from loopwm.envs.world_config import OBS_FEATURES, REGIMES, WorldConfig
from loopwm.envs.world_env import LoopWorldEnv, render_obs
from loopwm.utils import LoopWMError

__all__ = [
    "DEFAULT_EPISODE_STEPS",
    "ENV_IDS",
    "TASK_PRESETS",
    "OBS_FEATURES",
    "REGIMES",
    "LoopWorldEnv",
    "StepStats",
    "World",
    "WorldConfig",
    "make_env",
    "render_obs",
]

DEFAULT_EPISODE_STEPS = 200
"""Episode length of the registered ids (gymnasium's TimeLimit); override with max_episode_steps."""

ENV_IDS: dict[str, str] = {
    "loopwm/Balls-v0": "balls",
    "loopwm/Cradle-v0": "cradle",
    "loopwm/Chain-v0": "chain",
    "loopwm/Rail-v0": "rail",
    "loopwm/Mixed-v0": "mixed",
    "loopwm/Push-v0": "balls",
}
"""Registered Gymnasium ids and the regime each one presets."""

TASK_PRESETS: dict[str, dict[str, Any]] = {
    # Push the blue ball (body 1) to the centre with the orange disc; a third ball is in the way.
    # Balls start at rest and roll to a stop (damping), so a ball stays where it was pushed.
    "loopwm/Push-v0": {"n_bodies": 3, "goal_body": 1, "goal": (0.5, 0.5), "reach_weight": 0.2,
                       "init_speed": 0.0, "disc_damping": 0.05},
}
"""World settings, beyond the regime, of the ids that are tasks rather than plain regimes."""

for _env_id, _regime in ENV_IDS.items():
    if _env_id not in gym.registry:  # importing twice (or reloading) must not re-register
        gym.register(
            id=_env_id,
            entry_point="loopwm.envs.world_env:LoopWorldEnv",
            kwargs={"regime": _regime, **TASK_PRESETS.get(_env_id, {})},
            max_episode_steps=DEFAULT_EPISODE_STEPS,
        )

# Gymnasium's "no such id" errors; anything else from gym.make is a real problem and passes through.
_LOOKUP_ERRORS = (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound,
                  gym.error.UnregisteredEnv, gym.error.DeprecatedEnv)


# ids whose registrations live in an optional package: prefix -> (module to import, extra that installs it)
_PLUGINS = {"ALE/": ("ale_py", "atari"), "MiniGrid-": ("minigrid", "minigrid"), "BabyAI-": ("minigrid", "minigrid")}
_MUJOCO_IDS = ("Ant", "HalfCheetah", "Hopper", "Humanoid", "InvertedDoublePendulum", "InvertedPendulum", "Pusher",
               "Reacher", "Swimmer", "Walker2d")


def _prepare(env_id: str) -> None:
    """Load the package that registers `env_id` and set up headless rendering where needed."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renderers (classic control) need no display
    for prefix, (module, extra) in _PLUGINS.items():
        if env_id.startswith(prefix):
            try:
                mod = importlib.import_module(module)
            except ImportError as err:
                raise LoopWMError(f"{env_id} needs the {module} package: pip install \"loopwm[{extra}]\"") from err
            if hasattr(gym, "register_envs"):
                gym.register_envs(mod)
    if env_id.split("-")[0] in _MUJOCO_IDS:
        # no display on servers: software EGL unless the user chose a backend
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
        if importlib.util.find_spec("mujoco") is None:
            raise LoopWMError(f"{env_id} is a MuJoCo task: pip install \"loopwm[mujoco]\" (and, for rendering on a "
                              "server, the system packages libegl1 libgl1-mesa-dri, see the README)")


# gymnasium's id grammar: an optional "module:" prefix, an optional namespace, a name, an optional version
_ID = re.compile(r"(?:[A-Za-z_][\w.]*:)?(?:[\w.-]+/)?[\w.-]+?(?:-v\d+)?")


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """Make a Gymnasium environment by id, with a LoopWMError for ids that do not exist.

    ``loopwm/...`` ids take ``WorldConfig`` fields as keyword arguments (``n_bodies=6``) plus
    gymnasium's ``max_episode_steps`` and ``render_mode``. Other ids go to ``gymnasium.make``.
    """
    if not isinstance(env_id, str):
        raise LoopWMError(f"env_id must be a string such as 'loopwm/Balls-v0', got {env_id!r}")
    if env_id.startswith("loopwm/") and env_id not in ENV_IDS:
        raise LoopWMError(f"unknown loopwm environment {env_id!r}: known ids are {', '.join(ENV_IDS)}")
    if not _ID.fullmatch(env_id):
        raise LoopWMError(f"{env_id!r} is not an environment id: ids look like 'CartPole-v1', 'ALE/Pong-v5' or "
                          f"'my_package:MyEnv-v0'. Built-in ids are {', '.join(ENV_IDS)}")
    _prepare(env_id)
    try:
        return gym.make(env_id, **kwargs)
    except (ImportError, gym.error.DependencyNotInstalled) as err:
        raise LoopWMError(f"{env_id} needs a package that is not installed ({err}); install it (see `loopwm doctor`)") from err
    except _LOOKUP_ERRORS as err:
        raise LoopWMError(f"gymnasium does not know the environment {env_id!r} ({err}). Built-in ids are "
                          f"{', '.join(ENV_IDS)}; for another id, install and import the package that "
                          "registers it first") from err
