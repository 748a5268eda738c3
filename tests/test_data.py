"""Datasets: round trip, manifest, validation errors, split, windows, batches, resumable collection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loopwm.data import CollectConfig, TrajectoryDataset, collect, make_policy, run_episode
from loopwm.envs import make_env
from loopwm.utils import LoopWMError


def small(tmp_path, name="d", **kw) -> CollectConfig:
    base = dict(env_id="loopwm/Balls-v0", out=str(tmp_path / name), episodes=5, shard_episodes=2, n_bodies=3,
                max_episode_steps=15, progress=False)
    return CollectConfig(**{**base, **kw})


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_round_trip_matches_what_the_environment_produced(tmp_path, env_id):
    path = collect(CollectConfig(env_id=env_id, out=str(tmp_path / "d"), episodes=3, shard_episodes=2,
                                 max_episode_steps=12, policy="random", progress=False))
    ds = TrajectoryDataset.load(path)
    env = make_env(env_id, max_episode_steps=12)
    for e in range(3):
        replay = run_episode(env, make_policy("random", env.action_space), seed=0, episode=e)
        stored = ds.episode(e)
        for key in ("obs", "action", "reward", "terminated", "truncated"):
            np.testing.assert_array_equal(stored[key], replay[key], err_msg=key)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["format"] == "loopwm-trajectories"
    assert manifest["episodes"] == 3 and len(manifest["shards"]) == 2
    assert manifest["steps"] == ds.steps == sum(len(ds.episode(e)["action"]) for e in range(3))
    kind = "discrete" if env_id == "CartPole-v1" else "box"
    assert manifest["action_space"]["type"] == kind
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_built_in_world_records_difficulty(tmp_path):
    ds = TrajectoryDataset.load(collect(small(tmp_path)))
    assert {"info_contacts", "info_solver_iterations"} <= set(ds.info_keys)
    assert ds.kinematics["position"] == [0, 1] and ds.obs_shape == (3, 7)
    assert ds.observation_space["low"][0][2] == -ds.observation_space["high"][0][2]


def test_corrupt_truncated_missing_and_foreign_data_give_clear_errors(tmp_path):
    path = collect(small(tmp_path))
    shard = path / "shard_00000.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LoopWMError, match="corrupt.*checksum"):
        TrajectoryDataset.load(path)
    shard.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(LoopWMError, match="shard_00000.npz cannot be read"):
        TrajectoryDataset.load(path, verify=False)
    shard.unlink()
    with pytest.raises(LoopWMError, match="missing"):
        TrajectoryDataset.load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(LoopWMError, match="newer loopwm"):
        TrajectoryDataset.load(path)
    (path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(LoopWMError, match="not a loopwm dataset"):
        TrajectoryDataset.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(LoopWMError, match="not valid JSON"):
        TrajectoryDataset.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(LoopWMError, match="no manifest"):
        TrajectoryDataset.load(path)
    with pytest.raises(LoopWMError, match="not found"):
        TrajectoryDataset.load(tmp_path / "nowhere")


def test_nan_observation_is_reported_with_its_episode(tmp_path):
    path = collect(small(tmp_path))
    shard = path / "shard_00001.npz"
    with np.load(shard, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    first_len = int(arrays["episode_lengths"][0])
    arrays["obs"][first_len + 1 + 4, 0, 0] = np.nan  # episode 1 of this shard, observation 4
    with open(shard, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(LoopWMError, match="NaN or inf in episode 1 .*step 4"):
        TrajectoryDataset.load(path, verify=False)


def test_split_windows_and_batches(tmp_path):
    ds = TrajectoryDataset.load(collect(small(tmp_path, episodes=10)))
    train, val = ds.split(0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted([*train, *val]) == list(range(10))
    assert [a.tolist() for a in ds.split(0.2, seed=3)] == [train.tolist(), val.tolist()]
    windows = ds.windows(train, 6)
    assert len(windows) == len(train) * (15 - 6 + 1)
    assert (windows[:, 1] + windows[:, 2] <= 15).all()  # never crosses an episode end
    batch = ds.batch(windows[[0, 7, -1]])
    assert batch["obs"].shape == (3, 7, 3, 7) and batch["action"].shape == (3, 6, 2)
    assert batch["reward"].shape == (3, 6) and batch["info_contacts"].shape == (3, 6)
    e, s, _ = windows[7]
    np.testing.assert_array_equal(batch["obs"][1], ds.episode(e)["obs"][s : s + 7])
    assert len(ds.windows(train, 16)) == 0
    stats = ds.stats(train)
    assert stats["obs_std"].shape == (7,) and stats["delta_std"][4] == 0.0  # radius never changes


def test_resumed_collection_equals_an_uninterrupted_one(tmp_path):
    straight = TrajectoryDataset.load(collect(small(tmp_path, "straight", episodes=7)))
    collect(small(tmp_path, "resumed", episodes=3))  # "killed" after 3 episodes
    resumed = TrajectoryDataset.load(collect(small(tmp_path, "resumed", episodes=7)))
    assert resumed.episodes == straight.episodes == 7
    for e in range(7):
        np.testing.assert_array_equal(straight.episode(e)["obs"], resumed.episode(e)["obs"])
        np.testing.assert_array_equal(straight.episode(e)["action"], resumed.episode(e)["action"])


def test_appending_with_other_settings_is_refused(tmp_path):
    collect(small(tmp_path))
    with pytest.raises(LoopWMError, match="other settings"):
        collect(small(tmp_path, seed=1))
    with pytest.raises(LoopWMError, match="unknown policy"):
        collect(small(tmp_path, "p", policy="teleport"))
