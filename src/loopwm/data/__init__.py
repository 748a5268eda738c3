"""Trajectory data: collection from any Gymnasium environment, shards + manifest, validated loading."""

from loopwm.data.collect import POLICIES, CollectConfig, collect, make_policy, run_episode
from loopwm.data.shards import SCHEMA_VERSION, TrajectoryDataset, describe_space

__all__ = ["POLICIES", "SCHEMA_VERSION", "CollectConfig", "TrajectoryDataset", "collect", "describe_space",
           "make_policy", "run_episode"]
