"""Datasets of trajectories: shards of whole episodes plus a manifest, validated on load.

A dataset is a folder:

    manifest.json        schema version, spaces, counts, one entry per shard with its sha256
    shard_00000.npz      whole episodes, concatenated along time (np.savez, loaded without pickle)
    shard_00001.npz      ...

Inside a shard, episode i contributes T_i + 1 observations (the first one, then one per step) and
T_i of everything else; `episode_lengths` holds the T_i. Arrays: obs, action, reward, terminated,
truncated, and info_<key> for each numeric per-step info value the environment reported (the
built-in world reports contacts and solver_iterations).

The manifest is rewritten (atomically) after every shard, so a killed collection leaves a valid,
smaller dataset, and collecting again into the same folder continues where it stopped.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loopwm.utils import LoopWMError, atomic_save, atomic_write_json, read_json, sha256_file

SCHEMA_VERSION = 1
FORMAT = "loopwm-trajectories"
STEP_KEYS = ("action", "reward", "terminated", "truncated")


def encode_bound(values: np.ndarray) -> list:
    """Space bounds for JSON, which has no infinity: +-inf become None."""
    arr = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, np.nan).tolist() if arr.ndim else [None if not math.isfinite(arr) else float(arr)]


def _none_for_nan(x):
    if isinstance(x, list):
        return [_none_for_nan(v) for v in x]
    return None if (isinstance(x, float) and math.isnan(x)) else x


def describe_space(space) -> dict[str, Any]:
    """JSON description of a Gymnasium Box or Discrete space."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return {"type": "box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _none_for_nan(encode_bound(space.low)), "high": _none_for_nan(encode_bound(space.high))}
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "shape": []}
    raise LoopWMError(f"unsupported space {space}: loopwm records Box and Discrete spaces (wrap others, e.g. FlattenObservation)")


def write_shard(path: Path, episodes: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Write whole episodes as one shard (atomically); returns its manifest entry."""
    arrays = {"episode_lengths": np.asarray([len(ep["action"]) for ep in episodes], dtype=np.int64)}
    for key in episodes[0]:
        arrays[key] = np.concatenate([ep[key] for ep in episodes], axis=0)
    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
            np.savez(f, **arrays)

    atomic_save(path, writer)
    return {"file": path.name, "episodes": len(episodes), "steps": int(arrays["episode_lengths"].sum()), "sha256": sha256_file(path)}


@dataclass
class _Index:
    obs_start: np.ndarray  # (E,) first observation row of each episode
    step_start: np.ndarray  # (E,) first step row of each episode
    lengths: np.ndarray  # (E,) steps per episode


class TrajectoryDataset:
    """A loaded, validated dataset held in memory.

    Example:
        >>> ds = TrajectoryDataset.load("data/balls")
        >>> train_idx, val_idx = ds.split(0.1)
        >>> windows = ds.windows(train_idx, length=12)   # (M, 3): episode, start, length
        >>> batch = ds.batch(windows[:32])                # obs (32, 13, N, F), action (32, 12, 2), ...
    """

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], lengths: np.ndarray):
        self.path = path
        self.manifest = manifest
        self.arrays = arrays
        obs_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
        step_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.index = _Index(obs_start, step_start, lengths.astype(np.int64))

    # ----- what the dataset holds -----
    @property
    def env_id(self) -> str:
        return self.manifest["env_id"]

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.manifest.get("env_kwargs") or {})

    @property
    def observation_space(self) -> dict[str, Any]:
        return self.manifest["observation_space"]

    @property
    def action_space(self) -> dict[str, Any]:
        return self.manifest["action_space"]

    @property
    def kinematics(self) -> dict[str, Any] | None:
        return self.manifest.get("kinematics")

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.observation_space["shape"])

    @property
    def episodes(self) -> int:
        return len(self.index.lengths)

    @property
    def steps(self) -> int:
        return int(self.index.lengths.sum())

    @property
    def info_keys(self) -> list[str]:
        return [k for k in self.arrays if k.startswith("info_")]

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """All arrays of episode i: obs (T+1, ...), the others (T, ...)."""
        o, s, n = self.index.obs_start[i], self.index.step_start[i], self.index.lengths[i]
        out = {"obs": self.arrays["obs"][o : o + n + 1]}
        for key, arr in self.arrays.items():
            if key != "obs":
                out[key] = arr[s : s + n]
        return out

    # ----- loading -----
    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "TrajectoryDataset":
        """Load and validate a dataset folder; every problem raises a LoopWMError saying what to do."""
        path = Path(path)
        if not path.is_dir():
            raise LoopWMError(f"dataset folder not found: {path}; create one with `loopwm collect --out {path}`")
        if not (path / "manifest.json").exists():
            raise LoopWMError(f"{path} has no manifest.json: it is not a loopwm dataset (or its collection never finished a shard)")
        manifest = read_json(path / "manifest.json", "dataset manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise LoopWMError(f"{path}/manifest.json is not a loopwm dataset manifest (format field missing or foreign)")
        version = manifest.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise LoopWMError(f"dataset {path} has schema version {version}, written by a newer loopwm; upgrade loopwm to read it")
        if not manifest.get("shards"):
            raise LoopWMError(f"dataset {path} holds no shards yet; run `loopwm collect` to fill it")
        parts: dict[str, list[np.ndarray]] = {}
        lengths = []
        obs_shape = tuple(manifest["observation_space"]["shape"])
        for entry in manifest["shards"]:
            shard = path / entry["file"]
            if not shard.exists():
                raise LoopWMError(f"shard {shard} listed in the manifest is missing; re-run collect to rewrite it")
            if verify and sha256_file(shard) != entry["sha256"]:
                raise LoopWMError(f"shard {shard} is corrupt (checksum mismatch); delete it and its manifest entry, "
                                  "or the whole folder, and re-run collect")
            arrays = _read_npz(shard)
            ep_len = arrays.get("episode_lengths")
            if ep_len is None or "obs" not in arrays or "action" not in arrays:
                raise LoopWMError(f"shard {shard} lacks required arrays (episode_lengths, obs, action); it is not a loopwm shard")
            _check_shard(shard, arrays, ep_len, obs_shape, entry)
            lengths.append(ep_len)
            for key, arr in arrays.items():
                if key != "episode_lengths":
                    parts.setdefault(key, []).append(arr)
        joined = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
        return cls(path, manifest, joined, np.concatenate(lengths))

    # ----- splits, statistics, windows, batches -----
    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Split episodes (never steps) into train and validation, deterministically from `seed`."""
        n = self.episodes
        if not 0 <= val_fraction < 1:
            raise LoopWMError(f"val_fraction must be in [0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def stats(self, episodes) -> dict[str, np.ndarray]:
        """Per-feature mean and std of observations and of one-step changes over `episodes`.

        For (N, F) observations the statistics pool over bodies, so they have shape (F,).
        """
        obs = [self.episode(int(i))["obs"].astype(np.float64) for i in episodes]
        flat = np.concatenate([o.reshape(len(o), -1, self.obs_shape[-1]) for o in obs], 0).reshape(-1, self.obs_shape[-1])
        deltas = np.concatenate([np.diff(o, axis=0).reshape(-1, self.obs_shape[-1]) for o in obs], 0)
        return {"obs_mean": flat.mean(0), "obs_std": flat.std(0), "delta_std": deltas.std(0)}

    def windows(self, episodes, length: int) -> np.ndarray:
        """Every window of `length` steps inside one episode: (M, 3) rows of (episode, start, length)."""
        rows = []
        for e in np.asarray(episodes, dtype=np.int64):
            n = int(self.index.lengths[e]) - length + 1
            if n > 0:
                rows.append(np.stack([np.full(n, e), np.arange(n), np.full(n, length)], axis=1))
        return np.concatenate(rows, 0).astype(np.int64) if rows else np.zeros((0, 3), np.int64)

    def batch(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays for windows of equal length: obs (B, L+1, ...), action (B, L, ...), reward (B, L), ..."""
        windows = np.asarray(windows, dtype=np.int64)
        ep, start, length = windows[:, 0], windows[:, 1], int(windows[0, 2])
        if not np.all(windows[:, 2] == length):
            raise LoopWMError("a batch needs windows of one length")
        obs_rows = (self.index.obs_start[ep] + start)[:, None] + np.arange(length + 1)  # (B, L+1)
        step_rows = (self.index.step_start[ep] + start)[:, None] + np.arange(length)  # (B, L)
        out = {"obs": self.arrays["obs"][obs_rows]}
        for key, arr in self.arrays.items():
            if key != "obs":
                out[key] = arr[step_rows]
        return out


def _read_npz(shard: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(shard, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as err:
        raise LoopWMError(f"shard {shard} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt: "
                          "delete it and re-run collect") from err


def _check_shard(shard: Path, arrays: dict[str, np.ndarray], ep_len: np.ndarray, obs_shape: tuple, entry: dict) -> None:
    n_obs, n_steps = int((ep_len + 1).sum()), int(ep_len.sum())
    if len(ep_len) != entry.get("episodes") or n_steps != entry.get("steps"):
        raise LoopWMError(f"shard {shard} holds {len(ep_len)} episodes / {n_steps} steps, the manifest says "
                          f"{entry.get('episodes')} / {entry.get('steps')}; the dataset was edited by hand or is damaged")
    if arrays["obs"].shape != (n_obs, *obs_shape):
        raise LoopWMError(f"shard {shard}: obs has shape {arrays['obs'].shape}, expected {(n_obs, *obs_shape)}")
    for key, arr in arrays.items():
        if key not in ("obs", "episode_lengths") and len(arr) != n_steps:
            raise LoopWMError(f"shard {shard}: {key} has {len(arr)} rows, expected {n_steps}")
    obs_start = np.concatenate([[0], np.cumsum(ep_len + 1)[:-1]])
    step_start = np.concatenate([[0], np.cumsum(ep_len)[:-1]])
    for key, starts in (("obs", obs_start), ("action", step_start), ("reward", step_start)):
        arr = arrays.get(key)
        if arr is None or not np.issubdtype(arr.dtype, np.floating):
            continue
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            episode = int(np.searchsorted(starts, row, side="right") - 1)
            raise LoopWMError(f"shard {shard}: {key} holds NaN or inf in episode {episode} (of this shard), "
                              f"step {row - int(starts[episode])}; fix the environment or drop that episode")


def read_manifest(path: Path) -> dict[str, Any] | None:
    return read_json(path / "manifest.json", "dataset manifest") if (path / "manifest.json").exists() else None


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    manifest["episodes"] = sum(s["episodes"] for s in manifest["shards"])
    manifest["steps"] = sum(s["steps"] for s in manifest["shards"])
    atomic_write_json(path / "manifest.json", manifest)
