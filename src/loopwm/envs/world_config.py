"""The settings of the built-in world: regimes, observation columns and `WorldConfig`.

Kept apart from `physics.py` (the solvers) because the world's options and their checks are read by
the environment, the collectors and the CLI, which need none of the stepping code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from loopwm.utils import LoopWMError

REGIMES: tuple[str, ...] = ("balls", "cradle", "chain", "rail", "mixed")
"""Valid values of ``WorldConfig.regime``."""

OBS_FEATURES: tuple[str, ...] = ("x", "y", "vx", "vy", "radius", "controlled", "chain")
"""Column names of an observation: one row per body, these features in this order."""

# Feature indices, so code below never hard-codes column numbers.
POSITION_FEATURES = (OBS_FEATURES.index("x"), OBS_FEATURES.index("y"))
VELOCITY_FEATURES = (OBS_FEATURES.index("vx"), OBS_FEATURES.index("vy"))

MAX_BODIES = 64
"""Largest ``n_bodies`` accepted: the contact test is all-pairs, which is fine up to here."""


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world. Lengths in box units, time in seconds."""

    regime: str = "balls"
    """One of ``REGIMES``: "balls", "cradle", "chain", "rail" or "mixed" (balls, cradle or chain, drawn per reset)."""

    n_bodies: int = 5
    """Number of bodies (discs or chain particles), 2..64. Observations have one row per body."""

    box: float = 1.0
    """Side length L of the square box [0, L]^2."""

    dt: float = 0.05
    """Fixed timestep in seconds (of one physics step; an observed step is `substeps` of them)."""

    substeps: int = 1
    """Physics steps per observed step, the action held through all of them (action repeat, as in
    Atari and DMC). One observed step then carries several rounds of contacts, so it needs more of
    a model's passes; the step's solver iterations and contacts are summed over its physics steps.
    With more than one, positions no longer follow x' = x + dt * v' from the observed velocity.
    The Gymnasium env does the holding; ``World.step`` is always one physics step."""

    radius: float = 0.05
    """Nominal disc radius. Disc mass is (r / radius)^2, so a nominal disc has mass 1."""

    radius_jitter: float = 0.2
    """Discs in the balls regime get radii uniform in radius * (1 +- radius_jitter); cradles use equal radii."""

    restitution: float = 1.0
    """Coefficient of restitution for disc-disc and disc-wall contacts; 1 is perfectly elastic."""

    init_speed: float = 0.5
    """Largest initial speed of a free disc in the balls regime (speeds are uniform in [0, init_speed])."""

    striker_speed: tuple[float, float] = (0.4, 0.9)
    """Range of the strikers' initial speed in the cradle regime."""

    push_force: float = 3.0
    """Force of a full action (|a| = 1 per axis) on a controlled disc: dv = a * push_force * dt / mass."""

    max_speed: float = 1.0
    """The agent cannot push a controlled disc above this speed; also the chain driver's top speed."""

    speed_limit: float = 2.0
    """Hard cap on every body's speed (rarely reached); the velocity bound of the observation space."""

    n_controlled: int = 1
    """Discs 0..n_controlled-1 receive the action as a force (chain: particle 0 is always the driver)."""

    goal: tuple[float, float] = (0.5, 0.5)
    """Reward is minus the distance from body ``goal_body`` to this point."""

    goal_body: int = 0
    """The body whose distance to ``goal`` is the reward: 0 (the agent's own disc) moves the agent to
    the goal; another body makes it a pushing task (the agent must bring that ball there by contact)."""

    reach_weight: float = 0.0
    """Adds minus this times the surface gap between body 0 and ``goal_body`` to the reward (a
    shaping term for pushing tasks: the agent first has to reach the ball)."""

    disc_damping: float = 0.0
    """Balls and cradle regimes: fraction of every disc's velocity lost each step (0: frictionless, as
    the cradles need). A pushed ball then comes to rest where it was pushed instead of bouncing on."""

    solver_max_iters: int = 100
    """Most contact-solver sweeps per step; hitting it is reported as converged=False."""

    slop: float = 1e-6
    """Speculative-contact tolerance: a pair is in contact when its end-of-step gap would be below this."""

    chain_radius: float = 0.03
    """Radius of a chain particle."""

    chain_link: float = 2.2
    """Rest length of a chain link in particle radii (2 means neighbours just touch)."""

    gravity: float = 1.5
    """Downward acceleration in the chain regime (discs feel no gravity)."""

    chain_damping: float = 0.002
    """Fraction of a chain particle's velocity removed each step, so swinging slowly settles."""

    chain_tol: float = 1e-3
    """The chain solver stops once every link satisfies |dist - rest| / rest below this."""

    chain_max_iters: int = 200
    """Most chain-solver iterations per step; hitting it is reported as converged=False."""

    rail_radius: float = 0.01
    """Disc radius in the rail regime (every disc the same, mass 1, unless rail_jitter > 0). Discs may
    cover at most 70% of the rail: 2 * rail_radius * (1 + rail_jitter) * n_bodies <= 0.7 * box
    (fuller rails jam: an impulse runs wall to wall)."""

    rail_jitter: float = 0.0
    """Rail regime: radii uniform in rail_radius * (1 +- rail_jitter), masses proportional to area
    ((r / rail_radius)^2). With equal discs (0) a struck run hands the striker's velocity whole to
    its far end, an outcome one can read off the geometry; with unequal ones every contact splits
    the impulse, waves run back and forth, and the outcome is only known by doing the sweeps."""

    rail_gap: float = 0.1
    """Rail regime: the chance that two neighbouring discs start apart rather than touching, so runs
    of touching discs are about 1 / rail_gap long (cut at n_bodies). The free length of the rail
    is shared at random between the gaps and the two ends."""

    rail_movers: int = 2
    """Rail regime: discs that start moving (random direction, speed drawn from striker_speed)."""

    rail_damping: float = 0.01
    """Rail regime: fraction of every disc's velocity lost each step (rolling friction). Without it
    an agent that keeps pushing fills the rail with fast discs until every gap is crossed within a
    step and the rail jams (an impulse runs wall to wall)."""

    render_size: int = 64
    """Side in pixels of frames from render() (rgb_array)."""

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise LoopWMError(f"unknown regime {self.regime!r}: use one of {', '.join(REGIMES)}")
        if isinstance(self.n_bodies, bool) or not isinstance(self.n_bodies, (int, np.integer)):
            raise LoopWMError(f"n_bodies must be an integer, got {self.n_bodies!r}")
        if not 2 <= self.n_bodies <= MAX_BODIES:
            raise LoopWMError(f"n_bodies={self.n_bodies} is out of range: use 2..{MAX_BODIES}")
        positive = ("box", "dt", "radius", "max_speed", "speed_limit", "chain_radius", "chain_tol")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise LoopWMError(f"{name} must be a positive number, got {value!r}")
        if not 0.0 <= self.radius_jitter < 1.0:
            raise LoopWMError(f"radius_jitter={self.radius_jitter} must be in [0, 1)")
        if not 0.0 <= self.restitution <= 1.0:
            raise LoopWMError(f"restitution={self.restitution} must be in [0, 1] (1 = elastic)")
        if self.max_speed > self.speed_limit:
            raise LoopWMError(f"max_speed={self.max_speed} exceeds speed_limit={self.speed_limit}: raise speed_limit")
        if len(self.striker_speed) != 2 or self.striker_speed[0] > self.striker_speed[1]:
            raise LoopWMError(f"striker_speed={self.striker_speed} must be a (low, high) pair with low <= high")
        speeds = (self.init_speed, *self.striker_speed)
        if max(speeds) > self.speed_limit or min(speeds) < 0:
            raise LoopWMError("init_speed and striker_speed must lie in [0, speed_limit]: lower them or raise speed_limit")
        if len(self.goal) != 2:
            raise LoopWMError(f"goal={self.goal} must be an (x, y) point")
        # Walls are only guaranteed if a body can never cross the free space of the box in one step.
        free = self.box - 2 * max(self.max_radius, self.chain_radius)
        if self.speed_limit * self.dt >= free:
            raise LoopWMError(f"speed_limit * dt = {self.speed_limit * self.dt:g} must be below the free width "
                              f"of the box ({free:g}): lower dt or speed_limit, or enlarge the box")
        if self.chain_link < 2.0:
            raise LoopWMError(f"chain_link={self.chain_link} must be >= 2 (links shorter than a diameter overlap)")
        if not 0 <= self.n_controlled <= self.n_bodies:
            raise LoopWMError(f"n_controlled={self.n_controlled} must be in 0..n_bodies ({self.n_bodies})")
        if isinstance(self.substeps, bool) or not isinstance(self.substeps, (int, np.integer)) or not 1 <= self.substeps <= 100:
            raise LoopWMError(f"substeps={self.substeps!r} must be an integer in 1..100 (physics steps per observed step)")
        if self.solver_max_iters < 1 or self.chain_max_iters < 1:
            raise LoopWMError("solver_max_iters and chain_max_iters must be at least 1")
        if self.slop < 0 or self.gravity < 0 or not 0 <= self.chain_damping < 1:
            raise LoopWMError("slop and gravity must be >= 0 and chain_damping in [0, 1)")
        if not 0 <= self.goal_body < self.n_bodies:
            raise LoopWMError(f"goal_body={self.goal_body} must be a body index in 0..n_bodies-1 ({self.n_bodies - 1})")
        if not (math.isfinite(self.reach_weight) and self.reach_weight >= 0):
            raise LoopWMError(f"reach_weight={self.reach_weight} must be a number >= 0")
        if not 0.0 <= self.disc_damping < 1.0:
            raise LoopWMError(f"disc_damping={self.disc_damping} must be in [0, 1)")
        if not 0.0 <= self.rail_damping < 1.0:
            raise LoopWMError(f"rail_damping={self.rail_damping} must be in [0, 1)")
        if not 0.0 <= self.rail_gap <= 1.0:
            raise LoopWMError(f"rail_gap={self.rail_gap} is a probability: use a value in [0, 1]")
        if not 0 <= self.rail_movers <= self.n_bodies:
            raise LoopWMError(f"rail_movers={self.rail_movers} must be in 0..n_bodies ({self.n_bodies})")
        if not (math.isfinite(self.rail_radius) and self.rail_radius > 0):
            raise LoopWMError(f"rail_radius must be a positive number, got {self.rail_radius!r}")
        if not 0.0 <= self.rail_jitter < 1.0:
            raise LoopWMError(f"rail_jitter={self.rail_jitter} must be in [0, 1)")
        rail_max = self.rail_radius * (1.0 + self.rail_jitter)
        if self.regime == "rail" and 2 * rail_max * self.n_bodies > 0.7 * self.box:
            most = int(0.7 * self.box / (2 * rail_max))
            raise LoopWMError(f"{self.n_bodies} discs of radius up to {rail_max:g} do not fit on a rail of length "
                              f"{self.box}: use at most {most} bodies, or a smaller rail_radius "
                              f"(<= {0.7 * self.box / (2 * self.n_bodies * (1.0 + self.rail_jitter)):.4g})")
        if self.render_size < 8:
            raise LoopWMError(f"render_size={self.render_size} is too small: use 8 or more pixels")

    @property
    def max_radius(self) -> float:
        """Largest disc radius any reset can produce."""
        return self.radius * (1.0 + self.radius_jitter)

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all fields, for error messages about unknown keyword arguments."""
        return [f.name for f in fields(cls)]
