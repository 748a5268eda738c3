"""Datasets: round trip, manifest, validation errors, split, windows, batches, stats, policies, resume."""

from __future__ import annotations

import importlib
import json
import mmap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from loopwm import __version__
from loopwm.data import (CollectConfig, TrajectoryDataset, collect, describe_space, episode_seeds, make_policy,
                         run_episode, space_from_description)
from loopwm.utils import LoopWMError


class FakeBodies(gym.Env):
    """A tiny (N, 7) world like the built-in one: variable-length episodes, info numbers, kinematics."""

    def __init__(self, n_bodies: int = 3):
        self.n = n_bodies
        inf = np.inf
        self.observation_space = spaces.Box(np.tile(np.float32([0, 0, -inf, -inf, 0, 0, 0]), (self.n, 1)),
                                            np.tile(np.float32([1, 1, inf, inf, 0.2, 1, 1]), (self.n, 1)), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.kinematics = {"position": [0, 1], "velocity": [2, 3], "dt": 0.05}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(4, 12))
        s = np.zeros((self.n, 7), np.float32)
        s[:, :2] = self.np_random.uniform(0.2, 0.8, (self.n, 2))
        s[:, 2:4] = self.np_random.normal(0, 0.1, (self.n, 2))
        s[:, 4], s[0, 5], s[:, 6] = 0.05, 1.0, 0.5
        self.s = s
        return s.copy(), {}

    def step(self, action):
        self.t += 1
        self.s[0, 2:4] += 0.1 * np.asarray(action, np.float32)
        self.s[:, :2] = np.clip(self.s[:, :2] + 0.05 * self.s[:, 2:4], 0, 1)
        info = {"contacts": self.t % 3, "solver_iterations": np.int64(2 + self.t % 2), "converged": self.t % 4 != 0,
                "err": 0.5 * self.t, "tag": "text", "vec": np.zeros(2)}
        return self.s.copy(), float(-self.t), self.t >= self.length, False, info


FAKE = "LoopwmTestFakeBodies-v0"
if FAKE not in gym.registry:
    gym.register(FAKE, entry_point=FakeBodies)


def cfg(tmp_path, name="d", **kw) -> CollectConfig:
    base = dict(env_id=FAKE, out=str(tmp_path / name), episodes=6, shard_episodes=2, policy="mixed", progress=False)
    return CollectConfig(**{**base, **kw})


@pytest.fixture
def fake(tmp_path):
    return collect(cfg(tmp_path))


def rewrite_shard(path, **changes):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return arrays


# ----- round trip -----
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_round_trip_matches_what_the_environment_produced(tmp_path, env_id):
    path = collect(CollectConfig(env_id=env_id, out=str(tmp_path / "d"), episodes=3, shard_episodes=2,
                                 max_episode_steps=12, policy="random", progress=False))
    ds = TrajectoryDataset.load(path)
    env = gym.make(env_id, max_episode_steps=12)
    for e in range(3):
        stored = ds.episode(e)
        obs, _ = env.reset(seed=episode_seeds(0, e)[0])  # replay the stored actions independently
        np.testing.assert_array_equal(stored["obs"][0], obs)
        for t, action in enumerate(stored["action"]):
            obs, reward, terminated, truncated, _ = env.step(int(action) if env_id == "CartPole-v1" else action)
            np.testing.assert_array_equal(stored["obs"][t + 1], obs)
            assert stored["reward"][t] == np.float32(reward)
            assert (stored["terminated"][t], stored["truncated"][t]) == (terminated, truncated)
        assert terminated or truncated
        replay = run_episode(env, make_policy("random", env.action_space), seed=0, episode=e)
        for key in ("obs", "action", "reward", "terminated", "truncated"):
            np.testing.assert_array_equal(stored[key], replay[key], err_msg=key)
    assert ds.arrays["obs"].dtype == np.float32 and ds.arrays["reward"].dtype == np.float32
    assert ds.arrays["action"].dtype == (np.int64 if env_id == "CartPole-v1" else np.float32)
    assert ds.arrays["terminated"].dtype == bool and ds.obs_shape == env.observation_space.shape

    m = json.loads((path / "manifest.json").read_text())
    assert (m["schema_version"], m["format"], m["env_id"], m["policy"], m["seed"]) == (1, "loopwm-trajectories", env_id, "random", 0)
    assert m["env_kwargs"] == {"max_episode_steps": 12} and m["kinematics"] is None and m["info_keys"] == []
    assert m["created_by"] == f"loopwm {__version__}"
    assert m["episodes"] == ds.episodes == 3 and m["steps"] == ds.steps == int(ds.lengths.sum())
    assert [s["file"] for s in m["shards"]] == ["shard_00000.npz", "shard_00001.npz"]
    assert [s["episodes"] for s in m["shards"]] == [2, 1] and all(len(s["sha256"]) == 64 for s in m["shards"])
    assert m["action_space"]["type"] == ("discrete" if env_id == "CartPole-v1" else "box")
    for key in ("observation_space", "action_space"):
        back, orig = space_from_description(m[key]), getattr(env, key)
        assert type(back) is type(orig) and back.shape == orig.shape and back.dtype == orig.dtype
        if isinstance(orig, spaces.Box):
            np.testing.assert_array_equal(back.low, orig.low)
            np.testing.assert_array_equal(back.high, orig.high)


def test_space_bounds_round_trip_exactly_through_strict_json():
    f32 = np.finfo(np.float32)
    box32 = spaces.Box(np.float32([-np.inf, -1.1, 0.1, f32.min]), np.float32([np.inf, 2.5, 0.3, f32.max]), dtype=np.float32)
    box64 = spaces.Box(np.array([[-np.inf, 1 / 3]]), np.array([[0.1, np.inf]]), dtype=np.float64)
    for space in (box32, box64, spaces.Discrete(5, start=2)):
        desc = json.loads(json.dumps(describe_space(space), allow_nan=False))  # strict JSON: no Infinity tokens
        back = space_from_description(desc)
        if isinstance(space, spaces.Box):
            assert back.dtype == space.dtype and back.shape == space.shape
            np.testing.assert_array_equal(back.low, space.low)
            np.testing.assert_array_equal(back.high, space.high)
        else:
            assert (back.n, back.start) == (5, 2)
    assert describe_space(box32)["low"][0] == "-inf" and describe_space(box32)["high"][0] == "inf"
    with pytest.raises(LoopWMError, match="unsupported space"):
        describe_space(spaces.MultiBinary(3))


def test_body_world_records_info_kinematics_and_variable_lengths(fake):
    ds = TrajectoryDataset.load(fake)
    m = ds.manifest
    assert m["info_keys"] == ["contacts", "solver_iterations", "converged", "err"]  # not the string, not the vector
    assert m["info_dtypes"] == {"contacts": "int32", "solver_iterations": "int32", "converged": "bool", "err": "float32"}
    assert ds.info_keys == ["info_contacts", "info_solver_iterations", "info_converged", "info_err"]
    assert ds.kinematics == {"position": [0, 1], "velocity": [2, 3], "dt": 0.05} and ds.obs_shape == (3, 7)
    assert len(set(ds.lengths.tolist())) > 1 and ds.steps == int(ds.lengths.sum())
    for e in range(ds.episodes):
        ep = ds.episode(e)
        T = ds.lengths[e]
        assert ep["obs"].shape == (T + 1, 3, 7) and ep["action"].shape == (T, 2) and ep["terminated"][-1]
        np.testing.assert_array_equal(ep["info_contacts"], np.arange(1, T + 1) % 3)
    assert m["observation_space"]["low"][0][2] == "-inf"
    low = space_from_description(m["observation_space"]).low
    assert np.isneginf(low[:, 2]).all() and (low[:, 0] == 0).all()
    assert len(ds) == 6 and "episodes=6" in repr(ds)
    with pytest.raises(LoopWMError, match="does not exist"):
        ds.episode(6)


# ----- validation errors -----
def test_corrupt_shard_fails_its_checksum(fake):
    shard = fake / "shard_00000.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LoopWMError, match=r"shard_00000.npz is corrupt \(checksum mismatch\); re-run collect"):
        TrajectoryDataset.load(fake)


def test_truncated_shard_gives_a_clear_error_without_verify(fake):
    shard = fake / "shard_00001.npz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(LoopWMError, match="shard_00001.npz cannot be read.*truncated or corrupt"):
        TrajectoryDataset.load(fake, verify=False)
    shard.write_bytes(b"")
    with pytest.raises(LoopWMError, match="shard_00001.npz cannot be read"):
        TrajectoryDataset.load(fake, verify=False)


def test_pickled_arrays_are_refused_not_unpickled(fake):
    rewrite_shard(fake / "shard_00000.npz", reward=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(LoopWMError, match="shard_00000.npz cannot be read"):
        TrajectoryDataset.load(fake, verify=False)


def test_missing_folder_manifest_and_shard(fake, tmp_path):
    with pytest.raises(LoopWMError, match="dataset folder not found"):
        TrajectoryDataset.load(tmp_path / "nowhere")
    (fake / "shard_00002.npz").unlink()
    with pytest.raises(LoopWMError, match="shard_00002.npz listed in the manifest is missing"):
        TrajectoryDataset.load(fake)
    (fake / "manifest.json").unlink()
    with pytest.raises(LoopWMError, match="no manifest.json"):
        TrajectoryDataset.load(fake)


@pytest.mark.parametrize("edit, message", [
    (lambda m: {"format": "something-else", "shards": []}, "not a loopwm dataset"),
    (lambda m: ["a", "list"], "not a loopwm dataset"),
    (lambda m: {**m, "schema_version": 99}, "written by a newer loopwm.*upgrade"),
    (lambda m: {**m, "schema_version": "1"}, "invalid schema_version"),
    (lambda m: {**m, "shards": [{"file": "shard_00000.npz"}]}, "damaged: shard entry 0"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "file": "../x.npz"}]}, "not a file inside"),
    (lambda m: {**m, "episodes": 99}, "totals"),
    (lambda m: {**m, "shards": []}, "no shards yet"),
])
def test_foreign_newer_or_damaged_manifests(fake, edit, message):
    manifest = json.loads((fake / "manifest.json").read_text())
    (fake / "manifest.json").write_text(json.dumps(edit(manifest)))
    with pytest.raises(LoopWMError, match=message):
        TrajectoryDataset.load(fake)


def test_unparseable_manifest(fake):
    (fake / "manifest.json").write_text("{not json")
    with pytest.raises(LoopWMError, match="not valid JSON"):
        TrajectoryDataset.load(fake)


def test_nan_in_a_written_shard_names_shard_episode_and_step(fake):
    lengths = rewrite_shard(fake / "shard_00001.npz")["episode_lengths"]

    def poison_obs(obs):
        obs[lengths[0] + 1 + 4, 0, 0] = np.nan  # shard episode 1 = dataset episode 3, observation 4
        return obs

    rewrite_shard(fake / "shard_00001.npz", obs=poison_obs)
    with pytest.raises(LoopWMError, match=r"shard_00001.npz: obs holds NaN or inf in episode 3 of the dataset "
                                          r"\(episode 1 of this shard\), observation 4"):
        TrajectoryDataset.load(fake, verify=False)

    def poison_action(action):
        action[2, 1] = np.inf
        return action

    rewrite_shard(fake / "shard_00002.npz", action=poison_action)
    rewrite_shard(fake / "shard_00001.npz", obs=lambda o: np.nan_to_num(o))
    with pytest.raises(LoopWMError, match="action holds NaN or inf in episode 4 .*step 2"):
        TrajectoryDataset.load(fake, verify=False)


@pytest.mark.parametrize("change, message", [
    ({"episode_lengths": lambda x: x + 1}, "manifest says"),
    ({"reward": None}, "lacks the arrays"),
    ({"info_contacts": None}, "lacks the array 'info_contacts'"),
    ({"action": lambda a: a[:, :1]}, "action has shape"),
    ({"obs": lambda o: o[:-1]}, "obs has shape"),
    ({"terminated": lambda t: t.astype(np.float32)}, "terminated has dtype"),
    ({"extra": np.zeros(3)}, "does not list"),
    ({"episode_lengths": lambda x: x * 0}, "integers >= 1"),
])
def test_inconsistent_shard_arrays_are_reported(fake, change, message):
    rewrite_shard(fake / "shard_00000.npz", **change)
    with pytest.raises(LoopWMError, match=message):
        TrajectoryDataset.load(fake, verify=False)


# ----- split, stats, windows, batches -----
def test_split_is_disjoint_covering_and_deterministic(fake, tmp_path):
    ds = TrajectoryDataset.load(fake)
    train, val = ds.split(0.34, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted([*train, *val]) == list(range(6))
    again = ds.split(0.34, seed=3)
    assert train.tolist() == again[0].tolist() and val.tolist() == again[1].tolist()
    assert len(ds.split(0.01)[1]) == 1 and len(ds.split(0.99)[0]) == 1  # at least one on each side
    assert len(ds.split(0.0)[1]) == 0
    with pytest.raises(LoopWMError, match="val_fraction"):
        ds.split(1.0)
    two = TrajectoryDataset.load(collect(cfg(tmp_path, "two", episodes=2)))
    assert [len(x) for x in two.split(0.1)] == [1, 1]


def test_stats_match_a_direct_computation(fake):
    ds = TrajectoryDataset.load(fake)
    pick = [1, 4, 5]
    obs = [ds.episode(e)["obs"].astype(np.float64) for e in pick]
    flat = np.concatenate(obs).reshape(-1, 7)
    deltas = np.concatenate([np.diff(o, axis=0) for o in obs]).reshape(-1, 7)
    s = ds.stats(np.array(pick))
    np.testing.assert_allclose(s["obs_mean"], flat.mean(0))
    np.testing.assert_allclose(s["obs_std"], flat.std(0))
    np.testing.assert_allclose(s["delta_mean"], deltas.mean(0), atol=1e-12)
    np.testing.assert_allclose(s["delta_std"], deltas.std(0), atol=1e-12)
    assert s["obs_std"].shape == (7,) and s["delta_std"][4] == 0.0  # radius never changes
    with pytest.raises(LoopWMError, match="at least one episode"):
        ds.stats([])


def test_stats_keep_the_shape_of_vector_observations(tmp_path):
    ds = TrajectoryDataset.load(collect(CollectConfig(env_id="Pendulum-v1", out=str(tmp_path / "p"), episodes=2,
                                                      max_steps=5, policy="smooth", progress=False)))
    assert ds.stats([0, 1])["obs_mean"].shape == (3,) and ds.feature_shape == (3,)
    assert ds.lengths.tolist() == [5, 5] and ds.arrays["truncated"].reshape(2, 5)[:, -1].all()  # the max_steps cap


def test_windows_never_cross_episodes_and_batches_gather_them(fake):
    ds = TrajectoryDataset.load(fake)
    train = np.array([0, 2, 3, 5])
    for length in (1, 3, 6):
        w = ds.windows(train, length)
        expected = {(e, s) for e in train for s in range(ds.lengths[e] - length + 1)}
        assert w.dtype == np.int64 and w.shape == (len(expected), 3) and (w[:, 2] == length).all()
        assert {(int(e), int(s)) for e, s, _ in w} == expected  # all of them, each once
        assert (w[:, 1] + length <= ds.lengths[w[:, 0]]).all()
    assert len(ds.windows(train, 100)) == 0
    w = ds.windows(train, 3)
    b = ds.batch(w)
    B = len(w)
    assert b["obs"].shape == (B, 4, 3, 7) and b["action"].shape == (B, 3, 2) and b["reward"].shape == (B, 3)
    assert b["terminated"].shape == b["truncated"].shape == b["info_contacts"].shape == (B, 3)
    assert b["info_contacts"].dtype == np.int32 and b["info_converged"].dtype == bool
    for i, (e, s, L) in enumerate(w):
        ep = ds.episode(e)
        np.testing.assert_array_equal(b["obs"][i], ep["obs"][s : s + L + 1])
        for key in ("action", "reward", "terminated", "info_solver_iterations"):
            np.testing.assert_array_equal(b[key][i], ep[key][s : s + L])
    pairs = ds.batch(w[:, :2], length=3)
    assert all(np.array_equal(pairs[k], b[k]) for k in b)
    with pytest.raises(LoopWMError, match="outside its episode"):
        ds.batch(np.array([[0, ds.lengths[0] - 1, 3]]))
    with pytest.raises(LoopWMError, match="one length"):
        ds.batch(np.array([[0, 0, 2], [0, 0, 3]]))


def _mapped(arr: np.ndarray) -> bool:
    while arr is not None and not isinstance(arr, mmap.mmap):
        arr = arr.obj if isinstance(arr, memoryview) else getattr(arr, "base", None)
    return arr is not None


def test_memory_mapped_load_equals_an_in_memory_one(fake):
    mapped, read = TrajectoryDataset.load(fake), TrajectoryDataset.load(fake, mmap=False)
    assert len(mapped.shards) == 3 and all(_mapped(part["obs"]) for part in mapped.shards)
    assert not any(_mapped(part["obs"]) for part in read.shards)
    assert not mapped.shards[0]["obs"].flags.writeable  # a map of the shard file must never be written through
    assert sorted(mapped.arrays) == sorted(read.arrays)
    for key in read.arrays:
        np.testing.assert_array_equal(mapped.arrays[key], read.arrays[key], err_msg=key)
    w = mapped.windows(np.arange(6), 2)  # windows from all three shards in one batch
    for key, value in read.batch(w).items():
        np.testing.assert_array_equal(mapped.batch(w)[key], value, err_msg=key)
    mapped.release()  # dropping resident pages changes nothing that is read afterwards
    np.testing.assert_array_equal(mapped.batch(w)["obs"], read.batch(w)["obs"])
    for key, value in read.stats(np.arange(6)).items():
        np.testing.assert_allclose(mapped.stats(np.arange(6))[key], value, err_msg=key)


def test_compressed_shards_from_other_tools_are_read_instead_of_mapped(fake):
    shard = fake / "shard_00001.npz"
    with np.load(shard, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    with open(shard, "wb") as f:
        np.savez_compressed(f, **arrays)
    ds = TrajectoryDataset.load(fake, verify=False)
    assert _mapped(ds.shards[0]["obs"]) and not _mapped(ds.shards[1]["obs"])
    np.testing.assert_array_equal(ds.episode(2)["obs"], arrays["obs"][: ds.lengths[2] + 1])


def test_window_index_numbers_the_same_windows_without_storing_them(fake):
    ds = TrajectoryDataset.load(fake)
    for episodes, length in (([0, 2, 3, 5], 1), ([1, 4], 3), ([5], 7), (np.arange(6), 100)):
        index, rows = ds.window_index(np.array(episodes), length), ds.windows(np.array(episodes), length)
        assert len(index) == len(rows)
        np.testing.assert_array_equal(index.take(np.arange(len(index))), rows.reshape(-1, 3))
        if len(index):
            np.testing.assert_array_equal(index.take([len(index) - 1, 0]), rows[[-1, 0]])
            with pytest.raises(LoopWMError, match=r"window numbers must lie in \[0, "):
                index.take([len(index)])
    with pytest.raises(LoopWMError, match="window length must be an integer >= 1"):
        ds.window_index([0], 0)


# ----- collection: resume, refusal, policies -----
def test_killed_then_resumed_collection_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    collect_module = importlib.import_module("loopwm.data.collect")  # the package's `collect` is the function

    straight = TrajectoryDataset.load(collect(cfg(tmp_path, "straight", episodes=8)))  # 4 shards
    real = collect_module.run_episode

    def dies_at_episode_4(env, policy, seed, episode, *args):
        if episode == 4:
            raise KeyboardInterrupt
        return real(env, policy, seed, episode, *args)

    monkeypatch.setattr(collect_module, "run_episode", dies_at_episode_4)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg(tmp_path, "resumed", episodes=8))
    monkeypatch.undo()
    partial = TrajectoryDataset.load(tmp_path / "resumed")  # the shards written so far form a valid dataset
    assert (partial.episodes, len(partial.manifest["shards"])) == (4, 2)
    resumed = TrajectoryDataset.load(collect(cfg(tmp_path, "resumed", episodes=8)))  # the same command again
    assert resumed.episodes == straight.episodes == 8 and len(resumed.manifest["shards"]) == 4
    assert resumed.lengths.tolist() == straight.lengths.tolist()
    assert sorted(resumed.arrays) == sorted(straight.arrays)
    for key in straight.arrays:
        np.testing.assert_array_equal(resumed.arrays[key], straight.arrays[key], err_msg=key)
    again = TrajectoryDataset.load(collect(cfg(tmp_path, "resumed", episodes=8)))  # already complete: no change
    assert again.manifest["shards"] == resumed.manifest["shards"]


def test_appending_with_other_settings_is_refused(fake, tmp_path):
    for change in ({"seed": 1}, {"policy": "random"}, {"n_bodies": 4}, {"env_id": "Pendulum-v1"}):
        with pytest.raises(LoopWMError, match="other settings.*use a new --out or delete it"):
            collect(cfg(tmp_path, **change))
    with pytest.raises(LoopWMError, match="other settings"):
        collect(cfg(tmp_path), env_kwargs={"n_bodies": 3})
    more = TrajectoryDataset.load(collect(cfg(tmp_path), episodes=9))  # same settings: extended
    assert more.episodes == 9 and [s["episodes"] for s in more.manifest["shards"]] == [2, 2, 2, 2, 1]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(LoopWMError, match="not a loopwm dataset"):
        collect(cfg(tmp_path, "foreign"))


def test_bad_settings_are_refused_with_a_message(tmp_path):
    with pytest.raises(LoopWMError, match="unknown policy 'teleport'.*random, smooth, seek, mixed"):
        collect(cfg(tmp_path, policy="teleport"))
    with pytest.raises(LoopWMError, match="episodes must be at least 1"):
        collect(cfg(tmp_path, episodes=0))
    with pytest.raises(LoopWMError, match="seed must be >= 0"):
        collect(cfg(tmp_path, seed=-1))
    with pytest.raises(LoopWMError, match="unknown setting"):
        collect(env_id=FAKE, out=str(tmp_path / "x"), episodez=3)
    with pytest.raises(LoopWMError, match="Box observations"):
        collect(env_id="FrozenLake-v1", out=str(tmp_path / "frozen"), episodes=1, progress=False)
    with pytest.raises(LoopWMError, match="unknown policy"):
        make_policy("nope", spaces.Discrete(2))


def test_progress_bar_shows_rate_and_progress(tmp_path, capsys):
    collect(cfg(tmp_path, episodes=2, progress=True))
    err = capsys.readouterr().err
    assert "2/2" in err and "ep/s" in err


def test_policies_stay_in_bounds_are_deterministic_and_smooth():
    rng = np.random.default_rng
    half_open = spaces.Box(np.float32([-1, 0, -np.inf]), np.float32([1, np.inf, np.inf]), dtype=np.float32)
    for name in ("random", "smooth", "seek", "mixed"):
        p = make_policy(name, half_open)
        r = rng(0)
        p.reset(r)
        acts = np.stack([p(np.zeros(3), r) for _ in range(50)])
        assert acts.dtype == np.float32 and np.isfinite(acts).all() and half_open.contains(acts[0])
        assert all(half_open.contains(a) for a in acts)
        p.reset(r := rng(0))
        np.testing.assert_array_equal(np.stack([p(np.zeros(3), r) for _ in range(50)]), acts)
    box = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    p, r = make_policy("smooth", box), rng(1)
    p.reset(r)
    x = np.array([p(None, r)[0] for _ in range(400)])
    assert np.corrcoef(x[:-1], x[1:])[0, 1] > 0.6 and x.std() > 0.3  # correlated, and spans the box
    p, r = make_policy("smooth", spaces.Discrete(4, start=1)), rng(2)
    p.reset(r)
    d = np.array([p(None, r) for _ in range(400)])
    assert set(d.tolist()) <= {1, 2, 3, 4} and (d[1:] == d[:-1]).mean() > 0.7


def test_seek_pushes_the_controlled_body_toward_a_target():
    p, r = make_policy("seek", spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)), np.random.default_rng(0)
    p.reset(r)
    obs = np.zeros((3, 7), np.float32)
    obs[:, :2] = [[0.5, 0.5], [0.9, 0.5], [0.5, 0.1]]
    obs[1, 5] = 1.0  # body 1 is the controlled one
    pushes = np.stack([p(obs, r) for _ in range(100)])
    targets = np.array([[-1, 0], [-1, -1]]) / np.array([[1.0], [np.sqrt(2)]])
    assert (np.max(pushes @ targets.T, axis=1) > 0).mean() > 0.9
    falls_back = make_policy("seek", spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32))
    falls_back.reset(r)
    assert falls_back(np.zeros(4), r).shape == (3,)


def test_built_in_world_records_contacts_and_solver_iterations(tmp_path):
    try:
        import loopwm.envs  # noqa: F401 - registers the built-in ids
    except ImportError:
        pass
    if "loopwm/Balls-v0" not in gym.registry:
        pytest.skip("loopwm.envs does not register loopwm/Balls-v0 yet")
    ds = TrajectoryDataset.load(collect(CollectConfig(env_id="loopwm/Balls-v0", out=str(tmp_path / "b"), episodes=2,
                                                      n_bodies=3, max_episode_steps=20, progress=False)))
    assert {"info_contacts", "info_solver_iterations"} <= set(ds.info_keys)
    assert ds.arrays["info_contacts"].dtype == np.int32 and ds.steps == 40 and ds.obs_shape == (3, 7)
    assert ds.kinematics is not None and ds.kinematics["position"] == [0, 1]
