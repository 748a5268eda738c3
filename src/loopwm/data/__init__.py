"""Trajectory data: collection from any Gymnasium environment, shards + manifest, validated loading.

    from loopwm.data import CollectConfig, collect, TrajectoryDataset
    path = collect(CollectConfig(env_id="Pendulum-v1", out="data/pendulum", episodes=20, policy="smooth"))
    ds = TrajectoryDataset.load(path)            # validated; shards memory-mapped, not read
    train_idx, val_idx = ds.split(0.1)
    batch = ds.batch(ds.windows(train_idx, 8)[:32])

The storage format is described in `loopwm.data.shards`; reading it, in `loopwm.data.dataset`.
"""

from loopwm.data.collect import (POLICIES, CollectConfig, MixedPolicy, Policy, RandomPolicy, SeekPolicy, SmoothPolicy,
                                 collect, episode_seeds, make_policy, run_episode)
from loopwm.data.dataset import TrajectoryDataset, WindowIndex, load_dataset
from loopwm.data.shards import (FORMAT, SCHEMA_VERSION, decode_bounds, describe_space, encode_bounds,
                                space_from_description)

__all__ = ["FORMAT", "POLICIES", "SCHEMA_VERSION", "CollectConfig", "MixedPolicy", "Policy", "RandomPolicy",
           "SeekPolicy", "SmoothPolicy", "TrajectoryDataset", "WindowIndex", "collect", "decode_bounds", "describe_space",
           "encode_bounds", "episode_seeds", "load_dataset", "make_policy", "run_episode", "space_from_description"]
