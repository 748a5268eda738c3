"""A small deterministic 2D physics world: elastic discs in a box, and a hanging chain.

This is the world that loopwm's world models learn, so it is built around two promises the models
rely on:

1. **One integration rule.** After every step, in every regime, positions satisfy
   ``x_{t+1} = x_t + dt * v_{t+1}`` exactly (in float64; up to float32 rounding in observations).
   Everything that is not free flight acts on velocities: contacts are speculative velocity
   impulses, and the chain's position-based solver turns its corrected positions back into
   velocities ``(x_new - x_old) / dt``. A model can therefore predict a velocity and integrate it.
2. **Honest difficulty.** Each step reports how much sequential work its iterative solver needed
   (``solver_iterations``): 0 in free flight, one per "wave" of impulses when a collision passes
   through a row of touching balls, many when a stiff chain is pulled. Those counts are what the
   looped models' adaptive depth is compared against.

Regimes
-------
``balls``   N discs of slightly different radii and masses, random positions and velocities.
``cradle``  rows of touching discs at rest and one or two strikers aimed at them (Newton's cradle).
``chain``   N particles joined by distance constraints, under gravity, the first one driven.
``rail``    a Newton's cradle that stays one: equal discs on one line, in touching runs separated by
            random gaps, a few of them moving either way. A collision passes its impulse through a
            whole run within one step (k sweeps for a run of k), so which disc moves next depends
            on a chain of contacts as long as the run; the discs can never leave the line.
``mixed``   every reset draws one of balls, cradle or chain, with the same N.

Body 0 is the controlled body in every regime (the first ``n_controlled`` bodies for discs).

Contact solver (discs)
----------------------
A pair of discs, or a disc and a wall, is in contact when it touches now or would touch within this
step at current velocities: ``gap + dt * v_n < slop`` with ``gap`` measured surface to surface and
``v_n`` the relative normal velocity (negative when approaching). Approaching contacts get an
impulse that reflects their relative normal velocity (restitution 1: exact momentum and energy
conservation per pair). Because positions only move after the solver, the contact geometry (normals
and gaps) is computed once per step; each sweep re-tests which contacts still approach.

The sweeps are Gauss-Seidel: impulses are applied one after another, each seeing the velocities left
by the previous one. Each sweep first selects the contacts that approach at the start of the sweep
(vectorised), then applies them in a fixed order (pairs by index, then walls), re-testing each one
against the current velocities. Selecting at the start of the sweep makes the iteration count a
property of the physics rather than of body numbering: a striker hitting a row of k touching balls
takes exactly k impulse sweeps, whichever end of the index order the striker has. Sweeps repeat
until one finds nothing to do (converged) or ``solver_max_iters`` is reached.

Chain solver
------------
Position-based dynamics: predict positions with gravity, then project the distance constraints
Gauss-Seidel (a forward sweep from the driver, then a backward sweep, clamping to the walls as
particles move), until the largest relative length error is below ``chain_tol``. Errors travel
one link per sweep, so a long chain needs many iterations. Chain particles do not collide with
each other.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from loopwm.envs.world_config import (  # noqa: F401  (re-exported: the world's public names)
    MAX_BODIES,
    OBS_FEATURES,
    POSITION_FEATURES,
    REGIMES,
    VELOCITY_FEATURES,
    WorldConfig,
)
from loopwm.utils import LoopWMError


class StepStats(NamedTuple):
    """What one step's solver did. (A NamedTuple: cheap to build on every step.)"""

    contacts: int
    """Distinct contacts that did work: disc pairs and disc-wall contacts that received an impulse,
    or, for the chain, links that needed correcting plus particles held by a wall."""
    wall_contacts: int
    """The part of ``contacts`` that involved a wall."""
    solver_iterations: int
    """Sweeps that changed something (0 in free flight)."""
    converged: bool
    """False when the solver stopped at its iteration limit before satisfying everything."""


_FREE_FLIGHT = StepStats(0, 0, 0, True)

# A velocity component or relative normal velocity counts as "approaching" only below -_APPROACH_EPS,
# so round-off (1e-17) on touching bodies at rest cannot trigger endless vanishing impulses.
_APPROACH_EPS = 1e-9

# Capped speeds land a hair below speed_limit, so rounding cannot push them over the bound.
_CAP_SCALE = 1.0 - 1e-12


class World:
    """State arrays and the step function of one world.

    Public arrays (float64, updated in place): ``pos`` (N, 2), ``vel`` (N, 2), ``radius`` (N,),
    ``mass`` (N,), ``controlled`` (N,) and ``is_chain`` (N,) as 0/1 floats. ``regime`` is the regime
    of the current episode: "balls", "cradle" or "chain" (for "mixed" it changes at each reset).
    """

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config if config is not None else WorldConfig()
        cfg = self.config
        n = cfg.n_bodies
        self.n = n
        self.pos = np.zeros((n, 2))
        self.vel = np.zeros((n, 2))
        self.radius = np.full(n, cfg.radius)
        self.mass = np.ones(n)
        self.controlled = np.zeros(n)
        self.is_chain = np.zeros(n)
        # All unordered pairs in a fixed order; the Python lists are for the scalar impulse loop.
        self._pi, self._pj = np.triu_indices(n, 1)
        self._pi_list, self._pj_list = self._pi.tolist(), self._pj.tolist()
        self._obs = np.zeros((n, len(OBS_FEATURES)), dtype=np.float32)
        self.regime = "balls"
        self.reset(np.random.default_rng(0))  # a valid state from the start; callers reset with their seed

    # ------------------------------------------------------------------ state set-up

    def reset(self, rng: np.random.Generator) -> None:
        """Draw a new initial state for the configured regime from ``rng`` (fully determines it)."""
        cfg = self.config
        regime = cfg.regime
        if regime == "mixed":
            regime = ("balls", "cradle", "chain")[int(rng.integers(3))]
        self.regime = regime
        if regime == "balls":
            self._init_balls(rng)
        elif regime == "cradle":
            self._init_cradle(rng)
        elif regime == "rail":
            self._init_rail(rng)
        else:
            self._init_chain(rng)
        self._refresh()

    def set_state(self, positions, velocities, radii=None, *, chain: bool = False, rail: bool = False,
                  controlled=None) -> None:
        """Place bodies by hand (tests, demonstrations). Discs get mass (r / config.radius)^2.

        ``chain=True`` makes the bodies a chain in index order (particle 0 the driver), with the
        configured particle radius; ``rail=True`` makes them rail discs (radius rail_radius unless
        given, mass (r / rail_radius)^2, pushes along x only); ``controlled`` is a 0/1 vector (default: the config's choice).
        """
        pos = np.asarray(positions, dtype=np.float64)
        vel = np.asarray(velocities, dtype=np.float64)
        if pos.shape != (self.n, 2) or vel.shape != (self.n, 2):
            raise LoopWMError(f"positions and velocities must have shape ({self.n}, 2) for n_bodies={self.n}, "
                              f"got {pos.shape} and {vel.shape}")
        cfg = self.config
        self.regime = "chain" if chain else "rail" if rail else "balls"
        self.pos[:] = pos
        self.vel[:] = vel
        if chain:
            self.radius[:] = cfg.chain_radius
        elif rail and radii is None:
            self.radius[:] = cfg.rail_radius
        else:
            self.radius[:] = cfg.radius if radii is None else np.asarray(radii, dtype=np.float64)
        self.controlled[:] = 0.0
        if controlled is not None:
            self.controlled[:] = np.asarray(controlled, dtype=np.float64)
        elif chain:
            self.controlled[0] = 1.0
        else:
            self.controlled[: cfg.n_controlled] = 1.0
        self._refresh()

    def _refresh(self) -> None:
        """Recompute everything derived from radii and roles after a reset or set_state."""
        cfg = self.config
        chain = self.regime == "chain"
        self.is_chain[:] = 1.0 if chain else 0.0
        if chain:
            self.mass[:] = 1.0  # chain particles are all alike
        elif self.regime == "rail":
            self.mass[:] = (self.radius / cfg.rail_radius) ** 2  # 1 for the default equal discs
        else:
            self.mass[:] = (self.radius / cfg.radius) ** 2
        self.inv_mass = 1.0 / self.mass
        self._inv_mass_list = self.inv_mass.tolist()
        self._rsum = self.radius[self._pi] + self.radius[self._pj]
        # Wall limits for body centres; (N, 2) so one comparison covers both axes.
        self._lo = np.repeat(self.radius[:, None], 2, axis=1)
        self._hi = cfg.box - self._lo
        self._ctrl_idx = np.flatnonzero(self.controlled > 0.5).tolist()
        self._ctrl_inv_mass = [self._inv_mass_list[i] for i in self._ctrl_idx]
        self._chain_rest = cfg.chain_link * cfg.chain_radius
        # Static observation columns are written once here; step() only refreshes x, y, vx, vy.
        self._obs[:, 4] = self.radius
        self._obs[:, 5] = self.controlled
        self._obs[:, 6] = self.is_chain
        self._write_obs()

    def _place_discs(self, rng, radii: np.ndarray, placed: list[tuple[float, float, float]]) -> np.ndarray:
        """Rejection-sample non-overlapping centres for discs of the given radii."""
        L = self.config.box
        out = np.zeros((len(radii), 2))
        for k, r in enumerate(radii.tolist()):
            margin = 0.1 * r  # a little air between bodies, so nothing starts in contact
            for _ in range(2000):
                c = rng.uniform(r + margin, L - r - margin, size=2)
                if all((c[0] - x) ** 2 + (c[1] - y) ** 2 > (r + s + margin) ** 2 for x, y, s in placed):
                    break
            else:
                raise LoopWMError(f"could not place {len(radii)} discs of radius ~{r:.3f} in a box of side {L}: "
                                  "reduce n_bodies or radius, or enlarge the box")
            out[k] = c
            placed.append((c[0], c[1], r))
        return out

    def _init_balls(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = self.n
        self.radius[:] = cfg.radius * rng.uniform(1 - cfg.radius_jitter, 1 + cfg.radius_jitter, size=n)
        self.pos[:] = self._place_discs(rng, self.radius, [])
        angle = rng.uniform(0, 2 * np.pi, size=n)
        speed = rng.uniform(0, cfg.init_speed, size=n)
        self.vel[:] = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
        self.controlled[:] = 0.0
        self.controlled[: cfg.n_controlled] = 1.0

    def _init_cradle(self, rng: np.random.Generator) -> None:
        """Rows of touching discs at rest, each of the first rows with a striker aimed along it.

        Strikers are bodies 0 (controlled) and, for 8+ bodies, 1. A striker is offset sideways by a
        small random fraction of a radius, so not every strike is perfectly head-on.
        """
        cfg = self.config
        n, r, L = self.n, cfg.radius, cfg.box
        n_strikers = 1 if n < 8 else 2
        resting = n - n_strikers
        n_rows = max(1, math.ceil(resting / 5))
        sizes = [resting // n_rows + (1 if k < resting % n_rows else 0) for k in range(n_rows)]
        self.radius[:] = r
        strikers: list[tuple[np.ndarray, np.ndarray]] = []
        rows: list[np.ndarray] = []
        placed: list[tuple[float, float, float]] = []
        leftover = 0
        for k, size in enumerate(sizes):
            has_striker = k < n_strikers
            for _ in range(300):
                u = rng.normal(size=2)
                u /= np.linalg.norm(u)
                perp = np.array([-u[1], u[0]])
                gap = rng.uniform(0.01, 0.25) if has_striker else 0.0
                start = rng.uniform(r, L - r, size=2)
                centres = [start + u * (2 * r * i + (2 * r + gap if has_striker else 0.0)) for i in range(size)]
                if has_striker:
                    centres.insert(0, start + perp * r * rng.uniform(-0.15, 0.15))
                c = np.array(centres)
                inside = np.all((c > r + 0.1 * r) & (c < L - r - 0.1 * r))
                clear = all(np.all(np.hypot(c[:, 0] - x, c[:, 1] - y) > r + s + 0.1 * r) for x, y, s in placed)
                if inside and clear:
                    break
            else:  # no room for this row: its discs are scattered singly below instead
                leftover += size
                continue
            placed.extend((x, y, r) for x, y in c.tolist())
            if has_striker:
                speed = rng.uniform(*cfg.striker_speed)
                strikers.append((c[0], u * speed))
                rows.append(c[1:])
            else:
                rows.append(c)
        # Bodies are numbered strikers first (body 0 is the controlled one), then the rows.
        centres = [s[0][None] for s in strikers] + rows
        velocities = [s[1][None] for s in strikers] + [np.zeros_like(row) for row in rows]
        missing = n - sum(len(c) for c in centres)
        if missing:  # a striker or a row did not fit: fill up with resting single discs
            centres.append(self._place_discs(rng, np.full(missing, r), placed))
            velocities.append(np.zeros((missing, 2)))
        self.pos[:] = np.concatenate(centres)
        self.vel[:] = np.concatenate(velocities)
        self.controlled[:] = 0.0
        self.controlled[: cfg.n_controlled] = 1.0

    def _init_rail(self, rng: np.random.Generator) -> None:
        """Discs on the line y = box / 2 (equal unless rail_jitter): touching runs, random gaps, a few movers.

        Bodies are numbered in a random order (not left to right), so body 0, the controlled one,
        is a random disc and no model can read a disc's place in the row from its index.
        """
        cfg = self.config
        n, L = self.n, cfg.box
        apart = rng.random(n - 1) < cfg.rail_gap  # (n-1,) True where neighbours k, k+1 start apart
        r = np.full(n, cfg.rail_radius)  # (n,) left to right
        if cfg.rail_jitter > 0:  # drawn only when asked, so the default world's episodes stay as they were
            r = cfg.rail_radius * (1.0 + cfg.rail_jitter * rng.uniform(-1.0, 1.0, size=n))
        # the free length goes to the gaps and the two ends, in random shares (a flat Dirichlet)
        shares = rng.dirichlet(np.ones(int(apart.sum()) + 2)) * (L - 2 * r.sum())
        gaps = np.zeros(n - 1)
        gaps[apart] = shares[1:-1]
        before = np.concatenate([[0.0], np.cumsum(gaps)])  # (n,) gap length left of each disc
        if cfg.rail_jitter > 0:  # centre k = left end + the diameters before k + its own radius + the gaps
            x = shares[0] + np.concatenate([[0.0], np.cumsum(2 * r)[:-1]]) + r + before
        else:  # the same for equal discs, in the float order the default world's datasets were made with
            x = r + shares[0] + 2 * r * np.arange(n) + before
        vx = np.zeros(n)
        movers = rng.choice(n, size=cfg.rail_movers, replace=False)
        vx[movers] = rng.choice([-1.0, 1.0], size=len(movers)) * rng.uniform(*cfg.striker_speed, size=len(movers))
        order = rng.permutation(n)
        self.radius[:] = r[order]
        self.pos[:] = np.stack([x[order], np.full(n, L / 2)], axis=1)
        self.vel[:] = np.stack([vx[order], np.zeros(n)], axis=1)
        self.controlled[:] = 0.0
        self.controlled[: cfg.n_controlled] = 1.0

    def _init_chain(self, rng: np.random.Generator) -> None:
        """A chain hanging roughly downward from a driver in the upper part of the box, at rest."""
        cfg = self.config
        r, L = cfg.chain_radius, cfg.box
        rest = cfg.chain_link * r
        self.radius[:] = r
        pos = np.zeros((self.n, 2))
        pos[0] = [rng.uniform(0.2, 0.8) * L, rng.uniform(0.6, 0.9) * L]
        for k in range(1, self.n):
            for attempt in range(50):
                # Mostly downward, wider spread after failed tries (the box floor or a wall is near).
                angle = -np.pi / 2 + rng.normal(0.0, 0.6 + 0.1 * attempt)
                p = pos[k - 1] + rest * np.array([np.cos(angle), np.sin(angle)])
                if np.all((p >= r) & (p <= L - r)):
                    break
            else:
                p = np.clip(p, r, L - r)  # cornered: the solver restores the link in the first step
            pos[k] = p
        self.pos[:] = pos
        self.vel[:] = 0.0
        self.controlled[:] = 0.0
        self.controlled[0] = 1.0

    # ------------------------------------------------------------------ stepping

    def step(self, action) -> StepStats:
        """Advance one timestep under ``action`` (shape (2,), values clipped to [-1, 1])."""
        ax, ay = _check_action(action)
        if self.regime == "rail":
            ay = 0.0  # pushes act along the rail only
        if self.regime == "chain":
            stats = self._step_chain(ax, ay)
        else:
            stats = self._step_discs(ax, ay)
        self._write_obs()
        return stats

    def observation(self) -> np.ndarray:
        """Current observation, a fresh float32 (N, 7) array with columns ``OBS_FEATURES``."""
        return self._obs.copy()

    def _write_obs(self) -> None:
        self._obs[:, 0:2] = self.pos
        self._obs[:, 2:4] = self.vel

    def kinetic_energy(self) -> float:
        """Total kinetic energy sum(m v^2 / 2) (float64)."""
        return float(0.5 * np.sum(self.mass * np.sum(self.vel**2, axis=1)))

    def momentum(self) -> np.ndarray:
        """Total linear momentum sum(m v), shape (2,)."""
        return (self.mass[:, None] * self.vel).sum(axis=0)

    def _step_discs(self, ax: float, ay: float) -> StepStats:
        cfg = self.config
        dt, e, slop = cfg.dt, cfg.restitution, cfg.slop
        x, v = self.pos, self.vel

        damping = cfg.rail_damping if self.regime == "rail" else cfg.disc_damping
        if damping:
            v *= 1.0 - damping  # rolling friction, before anything else acts
        # 1. The agent's force, as a velocity change. A push may not take a disc above max_speed (or
        #    above its current speed if a collision already made it faster), so zero action is
        #    exactly passive physics and the agent cannot pump unbounded energy in.
        if ax or ay:
            for i, w in zip(self._ctrl_idx, self._ctrl_inv_mass):
                vx, vy = float(v[i, 0]), float(v[i, 1])
                nx, ny = vx + ax * cfg.push_force * dt * w, vy + ay * cfg.push_force * dt * w
                allowed = max(cfg.max_speed, math.hypot(vx, vy))
                speed = math.hypot(nx, ny)
                if speed > allowed:
                    scale = _CAP_SCALE * allowed / speed
                    nx, ny = nx * scale, ny * scale
                v[i, 0], v[i, 1] = nx, ny

        # 2. Contact geometry, fixed for the whole step because positions move only after the solver.
        pi, pj, rsum = self._pi, self._pj, self._rsum
        pi_list, pj_list = self._pi_list, self._pj_list
        if self.regime == "rail":
            # On a line only neighbours can touch. Testing every pair would let a fast disc's
            # speculative contact reach through its neighbour to the disc behind it.
            order = np.argsort(x[:, 0], kind="stable")
            pi, pj = np.minimum(order[:-1], order[1:]), np.maximum(order[:-1], order[1:])
            rsum = self.radius[pi] + self.radius[pj]
            pi_list, pj_list = pi.tolist(), pj.tolist()
        d = x[pj] - x[pi]
        dist = np.sqrt(np.einsum("ij,ij->i", d, d))
        normal = d / np.maximum(dist, 1e-12)[:, None]  # coincident centres: zero normal, no impulse
        # Speculative test gap + dt*v_n < slop rewritten as v_n < limit: one comparison per sweep.
        limit = (slop - (dist - rsum)) / dt
        np.minimum(limit, -_APPROACH_EPS, out=limit)  # and the pair must actually approach
        lo = self._lo + slop  # a centre ending below lo (above hi) would touch the wall
        hi = self._hi - slop

        # 3. Gauss-Seidel sweeps of impulses until nothing approaches any more.
        iterations = 0
        converged = True
        touched: set[int] = set()  # distinct contacts that received an impulse (walls encoded after pairs)
        n_pairs = len(pi_list)
        normal_list = None
        limit_list = None
        while True:
            dv = v[pj] - v[pi]
            vn = np.einsum("ij,ij->i", dv, normal)
            pair_hits = np.flatnonzero(vn < limit)
            xe = x + dt * v
            wall_lo = np.flatnonzero(((xe < lo) & (v < -_APPROACH_EPS)).ravel())
            wall_hi = np.flatnonzero(((xe > hi) & (v > _APPROACH_EPS)).ravel())
            if not (len(pair_hits) or len(wall_lo) or len(wall_hi)):
                break
            if iterations == cfg.solver_max_iters:
                converged = False
                break
            iterations += 1
            if len(pair_hits):
                if normal_list is None:  # only steps with collisions pay for the conversion
                    normal_list = normal.tolist()
                    limit_list = limit.tolist()
                w = self._inv_mass_list
                for k in pair_hits.tolist():
                    i, j = pi_list[k], pj_list[k]
                    nx, ny = normal_list[k]
                    # Re-test against the velocities left by earlier impulses in this sweep.
                    rel = (v[j, 0] - v[i, 0]) * nx + (v[j, 1] - v[i, 1]) * ny
                    if rel < limit_list[k]:
                        impulse = -(1.0 + e) * rel / (w[i] + w[j])
                        v[i, 0] -= impulse * w[i] * nx
                        v[i, 1] -= impulse * w[i] * ny
                        v[j, 0] += impulse * w[j] * nx
                        v[j, 1] += impulse * w[j] * ny
                        touched.add(k)
            # Walls have infinite mass: the normal velocity component is reflected.
            for flat in wall_lo.tolist():
                i, axis = divmod(flat, 2)
                vi = v[i, axis]  # re-test: a pair impulse earlier in this sweep may have changed it
                if vi < -_APPROACH_EPS and x[i, axis] + dt * vi < lo[i, axis]:
                    v[i, axis] = -e * vi
                    touched.add(n_pairs + 4 * i + axis)
            for flat in wall_hi.tolist():
                i, axis = divmod(flat, 2)
                vi = v[i, axis]
                if vi > _APPROACH_EPS and x[i, axis] + dt * vi > hi[i, axis]:
                    v[i, axis] = -e * vi
                    touched.add(n_pairs + 4 * i + 2 + axis)
            # The hard speed cap acts inside the loop, so the next sweep sees capped velocities and
            # the final state is contact-free and capped at once. Elastic impulses conserve energy,
            # so this only fires when the agent has pumped energy into the system.
            speed2 = np.einsum("ij,ij->i", v, v)
            if speed2.max() > cfg.speed_limit**2:
                fast = speed2 > cfg.speed_limit**2
                v[fast] *= (_CAP_SCALE * cfg.speed_limit / np.sqrt(speed2[fast]))[:, None]

        if not converged:
            # Out of sweeps: still never let a disc leave the box. Reflect anything that would.
            xe = x + dt * v
            out = ((xe < self._lo) & (v < 0)) | ((xe > self._hi) & (v > 0))
            v[out] *= -e

        # 4. Semi-implicit Euler: the only place positions change.
        x += dt * v
        if not touched:
            return _FREE_FLIGHT if converged else StepStats(0, 0, iterations, False)
        walls = sum(1 for c in touched if c >= n_pairs)
        return StepStats(len(touched), walls, iterations, converged)

    def _step_chain(self, ax: float, ay: float) -> StepStats:
        cfg = self.config
        dt = cfg.dt
        x, v = self.pos, self.vel
        rest, tol = self._chain_rest, cfg.chain_tol
        r = cfg.chain_radius
        lo, hi = r, cfg.box - r

        # 1. Driver velocity from the action (kinematic), everyone else: damping then gravity.
        dx, dy = ax * cfg.max_speed, ay * cfg.max_speed
        speed = math.hypot(dx, dy)
        if speed > cfg.max_speed:
            scale = _CAP_SCALE * cfg.max_speed / speed
            dx, dy = dx * scale, dy * scale
        v[1:] *= 1.0 - cfg.chain_damping
        v[1:, 1] -= cfg.gravity * dt
        v[0] = dx, dy

        # 2. Predict positions. The driver stays one link away from the walls, so particle 1 always
        #    has somewhere to go (in a corner the wall and link projections could lock each other).
        p = x + dt * v
        np.clip(p, lo, hi, out=p)
        np.clip(p[0], lo + rest, hi - rest, out=p[0])
        pts = p.tolist()

        # 3. Gauss-Seidel projection in pure Python (N <= 64 links: faster than NumPy calls here).
        #    One iteration is a forward sweep from the driver then a backward sweep; the symmetric
        #    order roughly halves the iterations a hanging chain needs. The driver has inverse mass
        #    0, so link 0 moves only particle 1; other links split the correction equally. Walls
        #    are clamps applied as each particle is moved.
        limit = tol * rest
        forward = range(len(pts) - 1)
        backward = range(len(pts) - 2, -1, -1)
        iterations = 0
        active_links = 0
        while True:
            worst, violated = _project_links(pts, forward, rest, lo, hi, limit)
            if iterations == 0:
                active_links = violated
            if worst <= limit:
                break
            if iterations == cfg.chain_max_iters:
                break
            iterations += 1
            _project_links(pts, backward, rest, lo, hi, limit)
        p = np.array(pts)
        held = int(np.count_nonzero((p <= lo) | (p >= hi)))

        # 4. Velocities from the position change, then positions from the velocities, so that
        #    x_{t+1} = x_t + dt * v_{t+1} holds to the last bit like for the discs.
        v[:] = (p - x) / dt
        speed2 = np.einsum("ij,ij->i", v, v)
        capped = speed2.max() > cfg.speed_limit**2
        if capped:
            # A whipping tail: cap it. The capped end point lies between x and p, both in the box.
            fast = speed2 > cfg.speed_limit**2
            v[fast] *= (_CAP_SCALE * cfg.speed_limit / np.sqrt(speed2[fast]))[:, None]
        x += dt * v
        # "converged" reports whether the links really hold at the end of the step (a capped tail
        # or a solver out of iterations may leave them stretched).
        seg = x[1:] - x[:-1]
        converged = bool(np.abs(np.sqrt(np.einsum("ij,ij->i", seg, seg)) - rest).max() <= limit)
        return StepStats(active_links + held, held, iterations, converged)


def _project_links(pts: list[list[float]], order, rest: float, lo: float, hi: float,
                   limit: float) -> tuple[float, int]:
    """One Gauss-Seidel sweep over the chain links in ``order``; returns the largest length error
    met (before correcting it) and how many links were off by more than ``limit``."""
    worst = 0.0
    violated = 0
    for k in order:
        a, b = pts[k], pts[k + 1]
        dx, dy = b[0] - a[0], b[1] - a[1]
        dist = math.sqrt(dx * dx + dy * dy)
        if dist < 1e-12:  # coincident particles: separate them along x rather than not at all
            dx, dy, dist = 1e-12, 0.0, 1e-12
        error = dist - rest
        if abs(error) > worst:
            worst = abs(error)
        if abs(error) > limit:
            violated += 1
        s = error / dist
        if k == 0:  # the driver is kinematic: only particle 1 moves
            b[0] = min(max(b[0] - dx * s, lo), hi)
            b[1] = min(max(b[1] - dy * s, lo), hi)
        else:
            s *= 0.5
            a[0] = min(max(a[0] + dx * s, lo), hi)
            a[1] = min(max(a[1] + dy * s, lo), hi)
            b[0] = min(max(b[0] - dx * s, lo), hi)
            b[1] = min(max(b[1] - dy * s, lo), hi)
    return worst, violated


def _check_action(action) -> tuple[float, float]:
    """Validate an action and return it as two floats clipped to [-1, 1]."""
    if isinstance(action, np.ndarray) and action.shape == (2,):
        ax, ay = action.tolist()
    else:
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise LoopWMError(f"action must be a numeric array of shape (2,), got {action!r}") from err
        if arr.shape != (2,):
            raise LoopWMError(f"action must have shape (2,) (a force in x and y), got shape {arr.shape}: "
                              "pass e.g. np.array([fx, fy], dtype=np.float32)")
        ax, ay = arr.tolist()
    try:
        ax, ay = float(ax), float(ay)
    except (TypeError, ValueError) as err:
        raise LoopWMError(f"action must be numeric, got {action!r}") from err
    if not (math.isfinite(ax) and math.isfinite(ay)):
        raise LoopWMError(f"action contains NaN or inf ({ax}, {ay}): check the policy's output")
    return min(max(ax, -1.0), 1.0), min(max(ay, -1.0), 1.0)
