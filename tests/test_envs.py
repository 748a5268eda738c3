"""Tests of the built-in world: conservation laws, the solver, invariants the models rely on, the
Gymnasium interface and its errors. The whole file runs in well under 30 seconds."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from loopwm.envs import ENV_IDS, OBS_FEATURES, World, WorldConfig, make_env, render_obs
from loopwm.utils import LoopWMError

ZERO = np.zeros(2)


def random_actions(seed: int, steps: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(steps, 2)).astype(np.float32)


def penetration(world: World) -> float:
    """Largest overlap of two bodies, as a fraction of the smaller radius (<= 0: no overlap)."""
    d = np.linalg.norm(world.pos[:, None] - world.pos[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    overlap = world.radius[:, None] + world.radius[None] - d
    return float((overlap / np.minimum(world.radius[:, None], world.radius[None])).max())


# ---------------------------------------------------------------- conservation laws


@pytest.mark.parametrize("regime,n", [("balls", 5), ("balls", 12), ("cradle", 5), ("cradle", 9)])
def test_energy_conserved_with_zero_action(regime, n):
    world = World(WorldConfig(regime=regime, n_bodies=n))
    world.reset(np.random.default_rng(3))
    e0 = world.kinetic_energy()
    contacts = 0
    for _ in range(400):
        contacts += world.step(ZERO).contacts
        assert world.kinetic_energy() == pytest.approx(e0, rel=1e-9)
    assert contacts > 5, "the rollout should contain collisions, or it tests nothing"


def test_momentum_conserved_in_collisions_away_from_walls():
    world = World(WorldConfig(regime="balls", n_bodies=10))
    world.reset(np.random.default_rng(4))
    checked = 0
    for _ in range(400):
        p0 = world.momentum()
        stats = world.step(ZERO)
        if stats.wall_contacts == 0:
            np.testing.assert_allclose(world.momentum(), p0, rtol=0, atol=1e-12)
            checked += stats.contacts > 0
    assert checked > 5, "expected several ball-ball collision steps without wall contacts"


def test_oblique_collision_of_unequal_discs_is_elastic():
    world = World(WorldConfig(n_bodies=2))
    world.set_state([[0.4, 0.5], [0.52, 0.52]], [[0.6, 0.1], [-0.3, 0.0]], radii=[0.04, 0.06])
    p0, e0 = world.momentum(), world.kinetic_energy()
    stats = world.step(ZERO)
    assert stats.contacts == 1 and stats.solver_iterations == 1 and stats.converged
    np.testing.assert_allclose(world.momentum(), p0, rtol=0, atol=1e-15)
    assert world.kinetic_energy() == pytest.approx(e0, rel=1e-14)
    # The discs now separate along the line of centres.
    d = world.pos[1] - world.pos[0]
    assert np.dot(world.vel[1] - world.vel[0], d) > 0


def test_restitution_below_one_loses_energy():
    world = World(WorldConfig(n_bodies=2, restitution=0.5))
    world.set_state([[0.3, 0.5], [0.41, 0.5]], [[0.5, 0.0], [0.0, 0.0]])
    world.step(ZERO)
    assert world.kinetic_energy() < 0.5 * 0.5**2 * 0.99
    np.testing.assert_allclose(world.momentum(), [0.5, 0.0], atol=1e-15)


# ---------------------------------------------------------------- the contact solver


@pytest.mark.parametrize("striker_last", [False, True])
def test_newtons_cradle_passes_the_impulse_down_the_row_in_one_step(striker_last):
    r, v = 0.05, 0.5
    row = [[0.4 + 2 * r * i, 0.5] for i in range(5)]  # five touching discs at rest
    striker = [0.4 - 2 * r - 0.01, 0.5]  # 0.01 away, closes it within this step (dt * v = 0.025)
    pos = [striker] + row
    vel = [[v, 0.0]] + [[0.0, 0.0]] * 5
    if striker_last:  # numbering must not change the physics or the iteration count
        pos, vel = pos[::-1], vel[::-1]
    world = World(WorldConfig(regime="cradle", n_bodies=6))
    world.set_state(pos, vel)
    stats = world.step(ZERO)
    far = 0 if striker_last else 5
    assert world.vel[far, 0] == pytest.approx(v, abs=1e-12)
    others = np.delete(world.vel, far, axis=0)
    assert np.abs(others).max() < 1e-12
    assert stats.solver_iterations == 5  # one sweep per link of the row
    assert stats.converged and stats.contacts == 5 and stats.wall_contacts == 0


def test_free_flight_needs_no_solver_iterations():
    world = World(WorldConfig(n_bodies=2))
    world.set_state([[0.3, 0.3], [0.7, 0.7]], [[0.1, 0.0], [0.0, -0.1]])
    assert world.step(ZERO) == (0, 0, 0, True)


def test_cradle_regime_produces_multi_sweep_steps():
    world = World(WorldConfig(regime="cradle", n_bodies=6))
    rng = np.random.default_rng(5)
    most = 0
    for _ in range(10):
        world.reset(rng)
        most = max(most, max(world.step(ZERO).solver_iterations for _ in range(40)))
    assert most >= 4


def test_chain_constraints_hold_after_every_converged_step():
    world = World(WorldConfig(regime="chain", n_bodies=8))
    rng = np.random.default_rng(6)
    world.reset(rng)
    cfg = world.config
    rest = cfg.chain_link * cfg.chain_radius
    converged = iterations = 0
    for t, action in enumerate(random_actions(6, 600)):
        stats = world.step(action)
        error = np.abs(np.linalg.norm(np.diff(world.pos, axis=0), axis=1) - rest) / rest
        if stats.converged:
            converged += 1
            assert error.max() < cfg.chain_tol
        iterations += stats.solver_iterations
        if t % 200 == 199:
            world.reset(rng)
    assert converged >= 0.97 * 600
    assert iterations / 600 > 3, "a stiff chain under gravity should need several iterations per step"


# ---------------------------------------------------------------- invariants the models rely on


@pytest.mark.parametrize("regime,n", [("balls", 16), ("balls", 3), ("cradle", 16), ("chain", 12)])
def test_no_tunnelling_and_tiny_overlaps_at_high_speed(regime, n):
    # The agent pushes at full force in random directions, up to the hard speed limit.
    cfg = WorldConfig(regime=regime, n_bodies=n, max_speed=2.0, push_force=10.0)
    world = World(cfg)
    rng = np.random.default_rng(7)
    world.reset(rng)
    worst = -np.inf
    for t, action in enumerate(np.sign(random_actions(7, 1500))):
        world.step(action)
        r = world.radius[:, None]
        assert np.all(world.pos >= r) and np.all(world.pos <= cfg.box - r), f"left the box at step {t}"
        assert np.linalg.norm(world.vel, axis=1).max() <= cfg.speed_limit
        if regime != "chain":  # chain particles do not collide with each other
            worst = max(worst, penetration(world))
        if t % 300 == 299:
            world.reset(rng)
    # Speculative contacts leave no overlap beyond round-off (measured: ~1e-13 of a radius).
    assert worst < 1e-9


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_positions_integrate_velocities_exactly(env_id):
    env = make_env(env_id, n_bodies=6)
    dt = env.unwrapped.kinematics["dt"]
    pos, vel = env.unwrapped.kinematics["position"], env.unwrapped.kinematics["velocity"]
    obs, _ = env.reset(seed=8)
    world = env.unwrapped.world
    for action in random_actions(8, 300):
        x_prev = world.pos.copy()
        nxt, _, _, truncated, _ = env.step(action)
        # Exact in float64 (the simulator's state) ...
        assert np.array_equal(world.pos, x_prev + dt * world.vel)
        # ... and up to float32 rounding in the observations.
        np.testing.assert_allclose(nxt[:, pos], obs[:, pos] + dt * nxt[:, vel], rtol=0, atol=1e-6)
        obs = env.reset()[0] if truncated else nxt


def test_same_seed_same_actions_give_identical_observations():
    def rollout(seed):
        env = make_env("loopwm/Mixed-v0", n_bodies=7, max_episode_steps=50)
        frames = [env.reset(seed=seed)[0]]
        for action in random_actions(9, 120):
            obs, _, _, truncated, _ = env.step(action)
            frames.append(obs)
            if truncated:
                frames.append(env.reset()[0])
        return np.stack(frames)

    a, b = rollout(11), rollout(11)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, rollout(12))


@pytest.mark.parametrize("env_id", list(ENV_IDS))
@pytest.mark.parametrize("n", [2, 16])
def test_observation_space_contains_every_observation(env_id, n):
    env = make_env(env_id, n_bodies=n, max_episode_steps=100, max_speed=2.0)
    obs, info = env.reset(seed=n)
    assert obs.shape == (n, len(OBS_FEATURES)) and obs.dtype == np.float32
    assert info == {"contacts": 0, "solver_iterations": 0, "converged": True}
    assert env.observation_space.contains(obs)
    for action in random_actions(n, 300):
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs), obs
        assert set(info) == {"contacts", "solver_iterations", "converged"}
        assert isinstance(info["contacts"], int) and isinstance(info["solver_iterations"], int)
        assert isinstance(reward, float) and reward <= 0 and not terminated
        if truncated:
            obs, _ = env.reset()


# ---------------------------------------------------------------- Gymnasium interface


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_gymnasium_env_checker_passes(env_id):
    env = make_env(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports most problems as warnings
        check_env(env.unwrapped, skip_render_check=True)


def test_registered_defaults_and_pass_through_kwargs():
    env = make_env("loopwm/Cradle-v0", n_bodies=6, max_episode_steps=7, dt=0.02)
    assert env.spec.max_episode_steps == 7 and make_env("loopwm/Balls-v0").spec.max_episode_steps == 200
    cfg = env.unwrapped.world_config
    assert (cfg.regime, cfg.n_bodies, cfg.dt) == ("cradle", 6, 0.02)
    assert env.unwrapped.kinematics == {"position": [0, 1], "velocity": [2, 3], "radius": 4, "dt": 0.02,
                                           "integrates": True}
    env.reset(seed=0)
    steps = 0
    while not env.step(env.action_space.sample())[3]:
        steps += 1
    assert steps == 6
    assert isinstance(gym.make("loopwm/Chain-v0").unwrapped, type(env.unwrapped))


def test_unknown_ids_and_options_raise_loopwm_errors():
    with pytest.raises(LoopWMError, match="loopwm/Balls-v0"):
        make_env("loopwm/Nope-v0")
    with pytest.raises(LoopWMError, match="NoSuchThing-v3"):
        make_env("NoSuchThing-v3")
    with pytest.raises(LoopWMError, match="valid options"):
        make_env("loopwm/Balls-v0", n_bodys=4)
    with pytest.raises(LoopWMError, match="regime"):
        WorldConfig(regime="soup")
    with pytest.raises(LoopWMError, match="n_bodies"):
        make_env("loopwm/Balls-v0", n_bodies=1)
    assert make_env("CartPole-v1").observation_space.shape == (4,)  # other ids fall back to gymnasium


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((1, 2)), [[0.0], [1.0]], [np.nan, 0.0], [0.0, np.inf], "up"])
def test_bad_actions_raise_loopwm_errors(bad):
    env = make_env("loopwm/Balls-v0")
    env.reset(seed=0)
    with pytest.raises(LoopWMError, match="action"):
        env.step(bad)


def test_render_shape_dtype_and_colours():
    env = make_env("loopwm/Mixed-v0", render_mode="rgb_array", n_bodies=6)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 3  # background plus bodies
    # A model's prediction may hold junk: it must still draw, from the array alone.
    obs = env.unwrapped.world.observation()
    obs[0, :2] = np.nan
    obs[1, 4] = -0.1
    big = render_obs(obs, size=128)
    assert big.shape == (128, 128, 3) and big.dtype == np.uint8
    chain = make_env("loopwm/Chain-v0", render_mode="rgb_array", render_size=96)
    chain.reset(seed=2)
    assert chain.render().shape == (96, 96, 3)
    with pytest.raises(LoopWMError):
        render_obs(np.zeros((3, 2)))


def test_a_band_of_rows_draws_the_same_pixels_as_cropping_the_whole_picture():
    for env_id in ("loopwm/Rail-v0", "loopwm/Chain-v0", "loopwm/Balls-v0"):
        env = make_env(env_id)
        obs, _ = env.reset(seed=4)
        full = render_obs(obs, size=192)
        for band in ((84, 108), (0, 40), (150, 192)):
            assert np.array_equal(render_obs(obs, size=192, rows=band), full[band[0]:band[1]]), (env_id, band)
    with pytest.raises(LoopWMError, match="band"):
        render_obs(obs, size=64, rows=(30, 10))


# ---------------------------------------------------------------- the pushing task


def test_push_task_rewards_the_pushed_balls_distance_and_balls_roll_to_a_stop():
    env = make_env("loopwm/Push-v0", render_mode="rgb_array")
    obs, _ = env.reset(seed=5)
    cfg = env.unwrapped.world_config
    assert (cfg.n_bodies, cfg.goal_body) == (3, 1) and np.abs(obs[:, 2:4]).max() == 0.0  # all at rest
    obs, reward, *_ = env.step(np.zeros(2, np.float32))
    world = env.unwrapped.world
    gap = np.hypot(*(world.pos[1] - world.pos[0])) - world.radius[0] - world.radius[1]
    expected = -np.hypot(*(world.pos[1] - np.asarray(cfg.goal))) - cfg.reach_weight * max(gap, 0.0)
    assert reward == pytest.approx(expected, abs=1e-12)
    # damping: a pushed disc loses the configured fraction of its speed every step, then rests
    for _ in range(10):
        env.step(np.array([1.0, 0.0], np.float32))
    speed = np.hypot(*world.vel[0])
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    if info["contacts"] == 0:  # free flight: exactly the damping
        assert np.hypot(*world.vel[0]) == pytest.approx(speed * (1 - cfg.disc_damping), rel=1e-9)
    for _ in range(400):
        env.step(np.zeros(2, np.float32))
    assert np.abs(world.vel).max() < 1e-3
    # the goal is drawn: red pixels appear that no body colour makes
    frame = env.render()
    assert (np.abs(frame.astype(int) - (235, 80, 90)).sum(-1) < 30).any()
    assert not (np.abs(make_env("loopwm/Balls-v0", render_mode="rgb_array").unwrapped.render().astype(int)
                       - (235, 80, 90)).sum(-1) < 30).any()


def test_goal_options_are_checked():
    with pytest.raises(LoopWMError, match="goal_body"):
        WorldConfig(n_bodies=3, goal_body=3)
    with pytest.raises(LoopWMError, match="disc_damping"):
        WorldConfig(disc_damping=1.0)
    with pytest.raises(LoopWMError, match="reach_weight"):
        WorldConfig(reach_weight=-1.0)


# ---------------------------------------------------------------- several physics steps per observed step


@pytest.mark.parametrize("env_id", ["loopwm/Cradle-v0", "loopwm/Rail-v0", "loopwm/Chain-v0"])
def test_substeps_hold_the_action_and_sum_the_solvers_work(env_id):
    k = 4
    fine = make_env(env_id, n_bodies=8)
    coarse = make_env(env_id, n_bodies=8, substeps=k)
    obs_f, _ = fine.reset(seed=3)
    obs_c, _ = coarse.reset(seed=3)
    assert np.array_equal(obs_f, obs_c)
    swept = 0
    for action in random_actions(0, 30):
        sweeps, contacts, converged = 0, 0, True
        for _ in range(k):  # the same action, k physics steps
            obs_f, reward_f, *_, info_f = fine.step(action)
            sweeps, contacts = sweeps + info_f["solver_iterations"], contacts + info_f["contacts"]
            converged = converged and info_f["converged"]
        obs_c, reward_c, *_, info_c = coarse.step(action)
        assert np.array_equal(obs_f, obs_c) and reward_f == reward_c
        assert (info_c["solver_iterations"], info_c["contacts"], info_c["converged"]) == (sweeps, contacts, converged)
        swept += sweeps
    assert swept > 0  # the check saw the solver work, not only free flight


def test_substeps_declare_the_observed_step_and_that_positions_no_longer_integrate():
    one = make_env("loopwm/Balls-v0").unwrapped.kinematics
    four = make_env("loopwm/Balls-v0", substeps=4).unwrapped.kinematics
    assert one["integrates"] and one["dt"] == pytest.approx(0.05)
    assert not four["integrates"] and four["dt"] == pytest.approx(0.2)
    for bad in (0, 1.5, True, 101):
        with pytest.raises(LoopWMError, match="substeps"):
            WorldConfig(substeps=bad)
