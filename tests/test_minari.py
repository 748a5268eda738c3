"""Minari datasets in and out: round trip, training on an import, refusals."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari", reason="the minari extra (pip install 'loopwm[minari]') is not installed")

from loopwm.data import TrajectoryDataset  # noqa: E402
from loopwm.data.minari_io import export_minari, import_minari, open_minari  # noqa: E402
from loopwm.utils import LoopWMError  # noqa: E402
from tests.test_cli import loopwm  # noqa: E402


def _collect(root, env_id, dataset_id, episodes=4, steps=25, **make):
    import os

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    env = minari.DataCollector(gym.make(env_id, max_episode_steps=steps, **make))
    env.action_space.seed(0)
    for ep in range(episodes):
        env.reset(seed=ep)
        while True:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
    ds = env.create_dataset(dataset_id=dataset_id, algorithm_name="random")
    env.close()
    return ds


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    return root, _collect(root, "CartPole-v1", "test/cartpole-v0", episodes=8, steps=15)  # terminates and truncates


def _same_episodes(ours: TrajectoryDataset, theirs):
    assert len(ours) == theirs.total_episodes
    for i, ep in enumerate(theirs.iterate_episodes()):
        mine = ours.episode(i)
        np.testing.assert_array_equal(mine["obs"], ep.observations.astype(np.float32))
        np.testing.assert_array_equal(mine["action"], ep.actions)
        np.testing.assert_array_equal(mine["reward"], ep.rewards.astype(np.float32))
        np.testing.assert_array_equal(mine["terminated"], ep.terminations)
        np.testing.assert_array_equal(mine["truncated"], ep.truncations)


def test_import_then_export_gives_back_the_original_episode_by_episode(cartpole, tmp_path):
    root, original = cartpole
    data = import_minari(root / "test" / "cartpole-v0", tmp_path / "cartpole")
    ours = TrajectoryDataset.load(data)
    _same_episodes(ours, original)
    assert any(ours.episode(i)["terminated"].any() for i in range(len(ours)))  # both kinds of ending occur
    assert any(ours.episode(i)["truncated"].any() for i in range(len(ours)))
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["env_id"] == "CartPole-v1" and manifest["source"]["minari"] == "test/cartpole-v0"
    assert manifest["stats"]["episodes"] == 8 and len(manifest["shards"]) == 1 and manifest["shards"][0]["sha256"]
    back = export_minari(data, "test/cartpole-back-v0", root=tmp_path / "store")
    _same_episodes(ours, back)
    assert back.spec.action_space == original.spec.action_space
    again = import_minari("test/cartpole-back-v0", tmp_path / "again", root=tmp_path / "store")  # by id
    _same_episodes(TrajectoryDataset.load(again), original)


def test_an_imported_dataset_trains_and_evaluates(tmp_path):
    root = tmp_path / "store"
    _collect(root, "Pendulum-v1", "test/pendulum-v0", episodes=4, steps=30)
    loopwm("import", "minari", "test/pendulum-v0", "--root", str(root), "--out", str(tmp_path / "pendulum"))
    loopwm("train", "--data", str(tmp_path / "pendulum"), "--out", str(tmp_path / "run"), "--steps", "3",
           "--batch-size", "4", "--no-progress", "--device", "cpu", "--model.d", "16", "--model.n-heads", "2")
    result = json.loads(loopwm("eval", str(tmp_path / "run"), "--json", "--rollout-steps", "10", "--horizon", "10",
                               "--max-windows", "4").stdout)
    assert result["env_id"] == "Pendulum-v1" and "1" in result["open_loop_error"]
    proc = loopwm("export", "minari", str(tmp_path / "pendulum"), "--dataset-id", "test/pendulum-out-v0",
                  "--root", str(root))
    assert "test/pendulum-out-v0" in proc.stdout


def test_refusals_name_the_problem(cartpole, tmp_path):
    root, _ = cartpole
    with pytest.raises(LoopWMError, match="already exists"):
        import_minari(root / "test" / "cartpole-v0", root)
    with pytest.raises(LoopWMError, match="no Minari dataset"):
        open_minari(tmp_path / "nothing", root=tmp_path)
    store = tmp_path / "dict"
    _collect(store, "CartPole-v1", "test/dict-v0", episodes=1, steps=5)
    # a dataset whose observations are a Dict space is refused by name
    from loopwm.data import minari_io

    class DictSpec:
        observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,))})
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(LoopWMError, match="Dict"):
        minari_io._space(DictSpec.observation_space, "observation space")
    proc = loopwm("import", "parquet", "x", "--out", str(tmp_path / "p"), check=False)
    assert proc.returncode == 2 and "minari" in proc.stderr
