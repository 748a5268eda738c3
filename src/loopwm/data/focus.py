"""Training windows drawn by how much happens in them, not only uniformly.

Most steps of a physical world are free flight, which one pass of a block predicts; the steps that
need many passes (an impulse through a row of touching discs, a chain pulled taut) are rare, so a
uniform draw shows the loop few of them. `window_surprise` scores every window by how far its
observations stray from constant-velocity extrapolation, a measure any environment has (no solver
counts needed); `WindowSampler` draws a fixed share of each batch in proportion to that score and
the rest uniformly.
"""

from __future__ import annotations

import numpy as np

from loopwm.data.dataset import TrajectoryDataset, WindowIndex
from loopwm.utils import LoopWMError


def step_surprise(ds: TrajectoryDataset, episode: int, scale: np.ndarray) -> np.ndarray:
    """(T,) per transition t of one episode: the mean squared miss of constant-velocity extrapolation,
    obs[t+1] - (2 obs[t] - obs[t-1]), in units of `scale` (per feature, broadcast over bodies or
    pixels). Transition 0 has no earlier velocity and scores 0."""
    shard = ds.shards[ds.episode_shard[episode]]["obs"]
    first, n_obs = int(ds.obs_start[episode]), int(ds.lengths[episode]) + 1
    obs = np.asarray(shard[first : first + n_obs], dtype=np.float64)  # (T+1, *obs_shape)
    out = np.zeros(n_obs - 1)
    if n_obs >= 3:
        miss = (obs[2:] - 2.0 * obs[1:-1] + obs[:-2]) / scale  # (T-1, *obs_shape)
        out[1:] = (miss * miss).reshape(n_obs - 2, -1).mean(axis=1)
    return out


def window_surprise(ds: TrajectoryDataset, index: WindowIndex, scale: np.ndarray) -> np.ndarray:
    """(len(index),) float64, in the index's window order: each window's mean step surprise over its
    transitions (see `step_surprise`)."""
    scale = np.where(np.asarray(scale, dtype=np.float64) > 1e-8, scale, 1.0)  # features that never change
    parts = []
    length = index.length
    for episode in index.episodes:
        s = step_surprise(ds, int(episode), scale)  # (T,)
        csum = np.concatenate([[0.0], np.cumsum(s)])  # (T+1,)
        parts.append((csum[length:] - csum[:-length]) / length)  # (T-length+1,) one per window start
    ds.release()
    return np.concatenate(parts) if parts else np.zeros(0)


class WindowSampler:
    """Draws training windows: `hard_fraction` of each batch in proportion to `weights` (one per
    window of `index`), the rest uniformly. With hard_fraction 0 it draws exactly what a uniform
    `rng.integers` draw over the index would (so runs without it are unchanged)."""

    def __init__(self, index: WindowIndex, weights: np.ndarray | None = None, hard_fraction: float = 0.0):
        if not 0.0 <= hard_fraction <= 1.0:
            raise LoopWMError(f"--hard-fraction {hard_fraction} is a share of each batch: use a value in [0, 1]")
        self.index, self.hard_fraction = index, hard_fraction
        self.cdf = None
        if hard_fraction > 0:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(index),) or not np.all(np.isfinite(w)) or (w < 0).any():
                raise LoopWMError("window weights must be one finite, non-negative number per window")
            if w.sum() <= 0:  # nothing ever happens in these windows: every window is as hard as any other
                w = np.ones_like(w)
            self.cdf = np.cumsum(w) / w.sum()

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Rows (episode, start, length), int64 (n, 3): the hard share first, then the uniform one."""
        hard = int(round(self.hard_fraction * n))
        picks = rng.integers(0, len(self.index), n - hard)
        if hard:
            chosen = np.searchsorted(self.cdf, rng.random(hard), side="right")
            picks = np.concatenate([np.minimum(chosen, len(self.index) - 1), picks])
        return self.index.take(picks)
