"""Gymnasium interface to the physics world, and a renderer that only needs an observation array.

``render_obs`` deliberately takes nothing but the (N, 7) observation, so the same function draws the
real world and a world model's predicted observation side by side.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from loopwm.envs.physics import World
from loopwm.envs.world_config import (
    OBS_FEATURES,
    POSITION_FEATURES,
    VELOCITY_FEATURES,
    WorldConfig,
)
from loopwm.utils import LoopWMError

# Colours (RGB) chosen to stay distinguishable on a dark background in small GIFs.
BACKGROUND = (24, 26, 34)
CONTROLLED_COLOUR = (255, 150, 40)
BALL_COLOUR = (90, 170, 255)
CHAIN_COLOUR = (110, 220, 120)
LINK_COLOUR = (70, 140, 80)
GOAL_COLOUR = (235, 80, 90)


class LoopWorldEnv(gym.Env):
    """The loopwm world as a Gymnasium environment.

    Observation: float32 (N, 7), one row per body, columns ``OBS_FEATURES``
    (x, y, vx, vy, radius, controlled, chain). Action: float32 (2,) in [-1, 1], a force on the
    controlled disc (or the chain driver's velocity). Reward: minus the distance from body
    ``goal_body`` (0 by default) to the goal, minus ``reach_weight`` times the gap between body 0 and
    that body. Never terminates; episodes are cut by gymnasium's TimeLimit (200 steps by default).
    ``info`` holds ``contacts``, ``solver_iterations`` and ``converged`` after every step and reset;
    with ``substeps`` > 1 (the action held over several physics steps) the first two are summed over
    them and ``converged`` holds only if every one converged.

    Keyword arguments other than ``config`` and ``render_mode`` are ``WorldConfig`` fields and
    override the config (e.g. ``n_bodies=6``, ``dt=0.02``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, config: WorldConfig | None = None, render_mode: str | None = None, **overrides: Any) -> None:
        base = config if config is not None else WorldConfig()
        unknown = sorted(set(overrides) - set(WorldConfig.field_names()))
        if unknown:
            raise LoopWMError(f"unknown world option(s) {', '.join(unknown)}: valid options are "
                              f"{', '.join(WorldConfig.field_names())}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise LoopWMError(f"render_mode={render_mode!r} is not supported: use 'rgb_array' or None")
        self.world_config = dataclasses.replace(base, **overrides) if overrides else base
        cfg = self.world_config
        self.world = World(cfg)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": max(1, int(round(1.0 / (cfg.dt * cfg.substeps))))}

        n = cfg.n_bodies
        v = cfg.speed_limit
        r_max = max(cfg.max_radius, cfg.chain_radius, cfg.rail_radius)
        # Real bounds per feature: centres stay in the box, speeds never exceed speed_limit.
        low = np.array([0.0, 0.0, -v, -v, 0.0, 0.0, 0.0], dtype=np.float32)
        high = np.array([cfg.box, cfg.box, v, v, r_max, 1.0, 1.0], dtype=np.float32)
        self.observation_space = spaces.Box(np.tile(low, (n, 1)), np.tile(high, (n, 1)), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._goal = (float(cfg.goal[0]), float(cfg.goal[1]))
        self._obs = self.world.observation()

    @property
    def kinematics(self) -> dict[str, Any]:
        """Which observation columns are positions, velocities and the body radius, the time one
        observed step spans, and whether positions follow x' = x + dt * v' from the observed velocity
        exactly ("integrates": true with one physics step per observed step; with several, a
        collision between them breaks it)."""
        cfg = self.world_config
        return {"position": list(POSITION_FEATURES), "velocity": list(VELOCITY_FEATURES),
                "radius": OBS_FEATURES.index("radius"), "dt": cfg.dt * cfg.substeps, "integrates": cfg.substeps == 1}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.world.reset(self.np_random)
        self._obs = self.world.observation()
        return self._obs, {"contacts": 0, "solver_iterations": 0, "converged": True}

    def step(self, action):
        contacts, sweeps, converged = 0, 0, True
        for _ in range(self.world_config.substeps):  # the action is held (action repeat)
            stats = self.world.step(action)
            contacts, sweeps = contacts + stats.contacts, sweeps + stats.solver_iterations
            converged = converged and stats.converged
        self._obs = obs = self.world.observation()
        reward = self._reward(self.world.pos)  # of the state the agent observes, as with one physics step
        info = {"contacts": contacts, "solver_iterations": sweeps, "converged": converged}
        return obs, reward, False, False, info

    def _reward(self, pos: np.ndarray) -> float:
        cfg, g = self.world_config, self.world_config.goal_body
        reward = -float(np.hypot(pos[g, 0] - self._goal[0], pos[g, 1] - self._goal[1]))
        if cfg.reach_weight and g != 0:
            gap = float(np.hypot(*(pos[g] - pos[0]))) - float(self.world.radius[0] + self.world.radius[g])
            reward -= cfg.reach_weight * max(gap, 0.0)
        return reward

    def render(self):
        if self.render_mode == "rgb_array":
            cfg = self.world_config
            goal = cfg.goal if cfg.goal_body != 0 else None  # shown where the goal is a ball's target
            return render_obs(self._obs, size=cfg.render_size, box=cfg.box, goal=goal)
        return None


_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in pixel units, cached per size (rendering is called per frame)."""
    if size not in _GRID_CACHE:
        c = np.arange(size, dtype=np.float32) + 0.5
        _GRID_CACHE[size] = (c[None, :], c[:, None])
    return _GRID_CACHE[size]


def render_obs(obs: np.ndarray, size: int = 64, box: float = 1.0, rows: tuple[int, int] | None = None,
               goal: tuple[float, float] | None = None) -> np.ndarray:
    """Draw one observation (N, 7) as an RGB image (size, size, 3) uint8, y pointing up.

    Uses only the observation, so predicted observations render the same way; values a model might
    produce (NaN, negative radii, fuzzy 0/1 flags) are tolerated. Discs are anti-aliased; consecutive
    chain particles are joined by a line. `rows` = (top, bottom) draws only that band of image rows
    (the same pixels as cropping the full picture, at a fraction of the cost). `goal` = (x, y) marks
    a pushing task's target with a cross under the bodies.
    """
    obs = np.nan_to_num(np.asarray(obs, dtype=np.float32), nan=-1.0, posinf=-1.0, neginf=-1.0)
    if obs.ndim != 2 or obs.shape[1] < len(OBS_FEATURES):
        raise LoopWMError(f"render_obs needs an (N, {len(OBS_FEATURES)}) observation, got shape {obs.shape}")
    if size < 8:
        raise LoopWMError(f"render size {size} is too small: use 8 or more pixels")
    top, bottom = rows if rows is not None else (0, size)
    if not 0 <= top < bottom <= size:
        raise LoopWMError(f"rows {rows} must be a band (top, bottom) with 0 <= top < bottom <= {size}")
    height = bottom - top
    scale = size / box
    px = obs[:, 0] * scale
    py = (box - obs[:, 1]) * scale - top  # image rows grow downward; row 0 is the band's top
    rad = np.clip(obs[:, 4], 0.0, box) * scale
    controlled = obs[:, 5] > 0.5
    chain = obs[:, 6] > 0.5

    img = np.empty((height, size, 3), dtype=np.float32)
    img[:] = BACKGROUND

    # Chain links first, so particles are drawn over them: sample points along each segment.
    links = np.flatnonzero(chain[:-1] & chain[1:])
    if len(links):
        t = np.linspace(0.0, 1.0, 2 * size)[None, :]
        lx = (px[links, None] + t * (px[links + 1] - px[links])[:, None]).astype(int).ravel()
        ly = (py[links, None] + t * (py[links + 1] - py[links])[:, None]).astype(int).ravel()
        ok = (lx >= 0) & (lx < size) & (ly >= 0) & (ly < height)
        img[ly[ok], lx[ok]] = LINK_COLOUR

    if goal is not None:  # a cross of two 1-pixel strokes, drawn first so bodies cover it
        cx, cy = int(goal[0] * scale), int((box - goal[1]) * scale) - top
        arm = max(2, size // 24)
        xs = np.clip(np.arange(cx - arm, cx + arm + 1), 0, size - 1)
        if 0 <= cy < height:
            img[cy, xs] = GOAL_COLOUR
        ys = np.arange(cy - arm, cy + arm + 1)
        ys = ys[(ys >= 0) & (ys < height)]
        if 0 <= cx < size:
            img[ys, cx] = GOAL_COLOUR

    gx, gy = _pixel_grid(size)
    for k in range(obs.shape[0]):
        r = max(float(rad[k]), 0.75)  # keep tiny bodies visible at low resolution
        x0, x1 = int(max(px[k] - r - 1, 0)), int(min(px[k] + r + 2, size))
        y0, y1 = int(max(py[k] - r - 1, 0)), int(min(py[k] + r + 2, height))
        if x0 >= x1 or y0 >= y1:
            continue  # entirely outside the picture
        dist = np.sqrt((gx[:, x0:x1] - px[k]) ** 2 + (gy[y0:y1] - py[k]) ** 2)
        cover = np.clip(r - dist + 0.5, 0.0, 1.0)[..., None]  # one-pixel soft edge
        colour = CONTROLLED_COLOUR if controlled[k] else CHAIN_COLOUR if chain[k] else BALL_COLOUR
        patch = img[y0:y1, x0:x1]
        patch += cover * (np.asarray(colour, dtype=np.float32) - patch)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
