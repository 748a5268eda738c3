"""The rail world: a Newton's cradle that stays one (equal discs on a line, touching runs, gaps)."""

from __future__ import annotations

import numpy as np
import pytest

from loopwm.envs import World, WorldConfig, make_env
from loopwm.utils import LoopWMError

ZERO = np.zeros(2)
R = 0.01


def row(world: World, k: int, striker_speed: float, from_left: bool, gap: float = 0.005):
    """A striker `gap` away from a touching run of k discs, moving into it from either end."""
    start = 0.3
    run = [start + 2 * R + gap + 2 * R * i for i in range(k)]
    x = np.array([start] + run) if from_left else np.array([start + 2 * R * k + gap] + [start + 2 * R * i for i in range(k)])
    v = np.zeros((k + 1, 2))
    v[0, 0] = striker_speed if from_left else -striker_speed
    world.set_state(np.stack([x, np.full(k + 1, 0.5)], 1), v, rail=True)


@pytest.mark.parametrize("k", [1, 2, 5, 9])
@pytest.mark.parametrize("from_left", [True, False])
def test_a_striker_into_a_touching_run_of_k_takes_k_sweeps_and_only_the_far_disc_leaves(k, from_left):
    world = World(WorldConfig(regime="rail", n_bodies=k + 1, rail_damping=0.0))
    row(world, k, 0.6, from_left)
    p0, e0 = world.momentum(), world.kinetic_energy()
    stats = world.step(ZERO)
    assert stats.solver_iterations == k and stats.contacts == k and stats.converged
    far = k if from_left else 1  # the run's far end: its last disc from the left, its first from the right
    moving = np.flatnonzero(np.abs(world.vel[:, 0]) > 1e-12)
    assert moving.tolist() == [far]
    assert world.vel[far, 0] == pytest.approx(0.6 if from_left else -0.6)
    np.testing.assert_allclose(world.momentum(), p0, atol=1e-12)
    assert world.kinetic_energy() == pytest.approx(e0, rel=1e-12)


def test_rail_conserves_energy_and_keeps_discs_on_the_line_without_friction():
    world = World(WorldConfig(regime="rail", n_bodies=16, rail_damping=0.0, rail_movers=3))
    world.reset(np.random.default_rng(1))
    e0 = world.kinetic_energy()
    hard = 0
    for _ in range(300):
        p0 = world.momentum()
        stats = world.step(ZERO)
        if stats.wall_contacts == 0:
            np.testing.assert_allclose(world.momentum(), p0, atol=1e-12)
        hard += stats.solver_iterations >= 3
        assert world.kinetic_energy() == pytest.approx(e0, rel=1e-9)
    assert np.all(world.pos[:, 1] == 0.5) and np.all(world.vel[:, 1] == 0.0)
    order = np.sort(world.pos[:, 0])
    assert np.all(np.diff(order) >= 2 * R - 1e-9), "discs overlap or passed through each other"
    assert hard > 5, "the rollout should contain impulses through runs, or it tests nothing"


def test_rail_reset_layout_runs_gaps_and_movers():
    cfg = WorldConfig(regime="rail", n_bodies=30, rail_gap=0.1, rail_movers=2)
    world = World(cfg)
    runs = []
    for seed in range(20):
        world.reset(np.random.default_rng(seed))
        x = np.sort(world.pos[:, 0])
        gaps = np.diff(x) - 2 * R
        assert gaps.min() > -1e-12 and x[0] >= R and x[-1] <= 1 - R
        touching = gaps < 1e-9
        runs += [len(r) + 1 for r in "".join("t" if t else " " for t in touching).split()]
        assert np.count_nonzero(world.vel[:, 0]) == 2
    assert 5 < np.mean(runs) < 15, "runs should be about 1 / rail_gap discs long"
    # bodies are not numbered left to right
    world.reset(np.random.default_rng(0))
    assert not np.all(np.diff(world.pos[:, 0]) > 0)


def test_pushes_act_along_the_rail_only_and_friction_slows_discs():
    world = World(WorldConfig(regime="rail", n_bodies=4, rail_movers=0))
    world.reset(np.random.default_rng(0))
    stats = world.step(np.array([1.0, 1.0]))
    # the push may pass on through a touching neighbour, but the rail gains x momentum only
    assert np.all(world.vel[:, 1] == 0.0)
    if stats.wall_contacts == 0:
        assert world.momentum()[0] == pytest.approx(3.0 * 0.05)
    cfg = WorldConfig(regime="rail", n_bodies=2, rail_damping=0.1)
    world = World(cfg)
    world.set_state([[0.2, 0.5], [0.8, 0.5]], [[0.5, 0.0], [0.0, 0.0]], rail=True)
    world.step(ZERO)
    assert world.vel[0, 0] == pytest.approx(0.45)


def test_a_full_rail_is_refused_with_the_fix():
    with pytest.raises(LoopWMError, match="do not fit.*at most 35 bodies"):
        WorldConfig(regime="rail", n_bodies=40, rail_radius=0.01)
    WorldConfig(regime="rail", n_bodies=64, rail_radius=0.005)  # a smaller radius fits


def test_rail_env_reports_solver_iterations():
    env = make_env("loopwm/Rail-v0", n_bodies=24, max_episode_steps=100)
    env.reset(seed=0)
    iters = [env.step(env.action_space.sample())[4]["solver_iterations"] for _ in range(100)]
    assert max(iters) >= 3 and min(iters) == 0


def test_unequal_rail_discs_have_jittered_radii_masses_by_area_and_conserve_energy():
    # slow strikers: a light disc struck by one 9x heavier leaves at up to 1.8x its speed, and the
    # world's hard speed cap (2.0), which does not conserve anything, must stay out of this test
    cfg = WorldConfig(regime="rail", n_bodies=16, rail_radius=0.01, rail_jitter=0.5, rail_damping=0.0, rail_movers=3,
                      striker_speed=(0.2, 0.4))
    world = World(cfg)
    world.reset(np.random.default_rng(3))
    assert np.all((world.radius >= 0.005) & (world.radius <= 0.015)) and np.ptp(world.radius) > 0.005
    np.testing.assert_allclose(world.mass, (world.radius / 0.01) ** 2)
    x = world.pos[:, 0]
    order = np.argsort(x)
    gaps = np.diff(x[order]) - (world.radius[order][:-1] + world.radius[order][1:])
    assert gaps.min() > -1e-12, "reset discs overlap"
    assert np.count_nonzero(gaps < 1e-9) >= 8, "most neighbours should start touching (rail_gap 0.1)"
    e0 = world.kinetic_energy()
    for _ in range(300):
        p0 = world.momentum()
        stats = world.step(ZERO)
        if stats.wall_contacts == 0:
            np.testing.assert_allclose(world.momentum(), p0, atol=1e-12)
        assert world.kinetic_energy() == pytest.approx(e0, rel=1e-9)
    order = np.argsort(world.pos[:, 0])
    surface = np.diff(world.pos[order, 0]) - (world.radius[order][:-1] + world.radius[order][1:])
    assert surface.min() > -1e-9, "discs overlap or passed through each other"


def test_an_impulse_into_a_run_of_unequal_discs_splits_and_needs_more_sweeps():
    # a heavy striker into a touching run of light discs: with equal discs only the far one would
    # leave after k sweeps; here several move, and the solver works at least as hard
    cfg = WorldConfig(regime="rail", n_bodies=5, rail_radius=0.01, rail_jitter=0.5, rail_damping=0.0)
    world = World(cfg)
    radii = np.array([0.014, 0.007, 0.012, 0.006, 0.01])
    x = [0.3]
    for k in range(1, 5):
        x.append(x[-1] + radii[k - 1] + radii[k] + (0.005 if k == 1 else 0.0))
    v = np.zeros((5, 2))
    v[0, 0] = 0.6
    world.set_state(np.stack([x, np.full(5, 0.5)], 1), v, radii, rail=True)
    p0, e0 = world.momentum(), world.kinetic_energy()
    stats = world.step(ZERO)
    assert stats.converged and stats.solver_iterations >= 4
    assert np.count_nonzero(np.abs(world.vel[:, 0]) > 1e-9) >= 3
    np.testing.assert_allclose(world.momentum(), p0, atol=1e-12)
    assert world.kinetic_energy() == pytest.approx(e0, rel=1e-12)


def test_jittered_rail_checks_its_range_and_the_fit_of_its_largest_discs():
    with pytest.raises(LoopWMError, match="rail_jitter"):
        WorldConfig(regime="rail", rail_jitter=1.0)
    with pytest.raises(LoopWMError, match="radius up to 0.015 do not fit.*at most 23 bodies"):
        WorldConfig(regime="rail", n_bodies=30, rail_radius=0.01, rail_jitter=0.5)
    WorldConfig(regime="rail", n_bodies=30, rail_radius=0.007, rail_jitter=0.5)
