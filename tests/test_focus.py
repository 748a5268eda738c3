"""Training windows drawn by how much happens in them (loopwm.data.focus, TrainConfig.hard_fraction)."""

from __future__ import annotations

import numpy as np
import pytest

from loopwm.checkpoint import latest_checkpoint, model_state, read_checkpoint
from loopwm.data import CollectConfig, TrajectoryDataset, collect
from loopwm.data.focus import WindowSampler, step_surprise, window_surprise
from loopwm.train.loop import train
from loopwm.utils import LoopWMError
from tests.test_data import fake  # noqa: F401 - the fixture is used below
from tests.test_train import dataset, tiny_cfg  # noqa: F401 - the fixture is used below


def test_window_surprise_is_each_windows_mean_constant_velocity_miss(fake):  # noqa: F811
    ds = TrajectoryDataset.load(fake)
    episodes, length = np.array([0, 2, 3, 5]), 3
    scale = ds.stats(episodes)["delta_std"]
    index = ds.window_index(episodes, length)
    got = window_surprise(ds, index, scale)
    safe = np.where(scale > 1e-8, scale, 1.0)  # the radius never changes: its std is 0
    expected = []
    for e, start, _ in index.take(np.arange(len(index))):
        obs = ds.episode(int(e))["obs"].astype(np.float64)  # (T+1, N, F)
        steps = []
        for t in range(start, start + length):
            miss = np.zeros_like(obs[0]) if t == 0 else (obs[t + 1] - 2 * obs[t] + obs[t - 1]) / safe
            steps.append((miss**2).mean())
        expected.append(np.mean(steps))
    assert got.shape == (len(index),)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_surprise_is_high_where_the_rails_solver_works(tmp_path):
    data = collect(CollectConfig(env_id="loopwm/Rail-v0", out=str(tmp_path / "rail"), episodes=6, seed=0, n_bodies=12,
                                 max_episode_steps=60, progress=False))
    ds = TrajectoryDataset.load(data)
    scale = ds.stats(np.arange(6))["delta_std"]
    scale = np.where(scale > 1e-8, scale, 1.0)
    surprise = np.concatenate([step_surprise(ds, e, scale)[1:] for e in range(6)])
    sweeps = np.concatenate([ds.episode(e)["info_solver_iterations"][1:] for e in range(6)])
    assert (sweeps == 0).any() and (sweeps >= 2).any()
    # free flight (only the driven discs accelerate) against steps whose contacts took solver sweeps
    assert surprise[sweeps >= 2].mean() > 3 * surprise[sweeps == 0].mean()


def test_a_sampler_without_a_hard_share_draws_the_uniform_batch(fake):  # noqa: F811
    ds = TrajectoryDataset.load(fake)
    index = ds.window_index(np.arange(6), 2)
    plain, focused = np.random.default_rng(7), np.random.default_rng(7)
    sampler = WindowSampler(index)
    for _ in range(3):  # the draw training made before the option existed, number for number
        np.testing.assert_array_equal(sampler.draw(focused, 5), index.take(plain.integers(0, len(index), 5)))


def test_the_hard_share_follows_the_weights(fake):  # noqa: F811
    ds = TrajectoryDataset.load(fake)
    index = ds.window_index(np.arange(6), 2)
    weights = np.zeros(len(index))
    weights[[3, 7]] = [1.0, 3.0]
    rng = np.random.default_rng(0)
    rows = WindowSampler(index, weights, hard_fraction=0.5).draw(rng, 4000)
    hard = rows[:2000]  # the hard share comes first
    assert {tuple(r) for r in hard} == {tuple(index.take([3])[0]), tuple(index.take([7])[0])}
    share = np.mean([tuple(r) == tuple(index.take([7])[0]) for r in hard])
    assert 0.72 < share < 0.78  # 3 / (1 + 3), 2,000 draws
    assert len({tuple(r) for r in rows[2000:]}) > 2  # the rest uniform over every window
    flat = WindowSampler(index, np.zeros(len(index)), hard_fraction=1.0).draw(rng, 200)  # nothing happens: uniform
    assert len({tuple(r) for r in flat}) > 2
    for bad, message in ((1.5, "share of each batch"), (-0.1, "share of each batch")):
        with pytest.raises(LoopWMError, match=message):
            WindowSampler(index, weights, hard_fraction=bad)
    with pytest.raises(LoopWMError, match="one finite, non-negative number per window"):
        WindowSampler(index, weights[:-1], hard_fraction=0.5)


def test_training_with_a_hard_share_is_seeded_and_refuses_a_bad_share(dataset, tmp_path):  # noqa: F811
    def weights(run):
        return model_state(read_checkpoint(latest_checkpoint(run))[0])

    wa, wb = (weights(train(tiny_cfg(dataset, tmp_path / name, hard_fraction=0.5))) for name in ("a", "b"))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    plain = weights(train(tiny_cfg(dataset, tmp_path / "plain")))
    assert any(not np.array_equal(wa[k].numpy(), plain[k].numpy()) for k in wa)  # other windows, other weights
    with pytest.raises(LoopWMError, match="--hard-fraction 2.0 is a share of each batch"):
        train(tiny_cfg(dataset, tmp_path / "bad", hard_fraction=2.0))
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made
