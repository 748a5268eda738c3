"""A loaded trajectory dataset: episodes, splits, statistics and training windows over the shards.

The files and their checks are `loopwm.data.shards`; this module reads a verified folder and serves
it to training and evaluation without copying it: each shard's arrays stay memory-mapped, episodes
never cross shards, and windows are numbered lazily (`WindowIndex`) so that ten million steps cost
no more memory than a thousand.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from loopwm.data.shards import (MANIFEST, _allow_open_files, _check_shard, _info_dtypes, _read_npz, _release, _starts,
                                read_manifest)
from loopwm.utils import LoopWMError, sha256_file


def _check_window_length(length) -> None:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise LoopWMError(f"window length must be an integer >= 1, got {length!r}")


class TrajectoryDataset:
    """A loaded, validated dataset, its shards memory-mapped (or held in memory).

    Example::

        ds = TrajectoryDataset.load("data/balls")
        train_idx, val_idx = ds.split(0.1)
        stats = ds.stats(train_idx)              # obs_mean/obs_std/delta_mean/delta_std, shape (F,)
        windows = ds.windows(train_idx, 12)      # (M, 3) rows: episode, start, length
        batch = ds.batch(windows[:32])           # obs (32, 13, N, F), action (32, 12, 2), reward (32, 12), ...

    Each shard's arrays stay separate (`shards[k]`): episodes never cross shards, so neither do
    windows, and nothing is concatenated. Loaded with `mmap=True` (the default) the arrays are
    read-only maps of the shard files, and resident memory grows only with the pages that batches
    touch; `release()` hands those back. `arrays` joins all shards into memory, for small datasets.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[dict[str, np.ndarray]],
                 maps: list[list] | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.shards = [{k: v for k, v in part.items() if k != "episode_lengths"} for part in shards]
        lengths = [np.asarray(part["episode_lengths"], dtype=np.int64) for part in shards]
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        # per episode: its shard, and where its observations and steps start inside that shard
        self.episode_shard = np.repeat(np.arange(len(lengths)), [len(x) for x in lengths])
        self.obs_start = np.concatenate([_starts(x + 1) for x in lengths]) if lengths else self.lengths.copy()
        self.step_start = np.concatenate([_starts(x) for x in lengths]) if lengths else self.lengths.copy()
        self._maps = maps or [[] for _ in shards]  # per shard: its mmap objects (none when read into memory)
        self._touched: set[int] = set()  # mapped shards read since the last release()
        self._joined: dict[str, np.ndarray] | None = None

    # ----- what the dataset holds -----
    @property
    def env_id(self) -> str:
        return self.manifest["env_id"]

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.manifest.get("env_kwargs") or {})

    @property
    def observation_space(self) -> dict[str, Any]:
        """The manifest's description (bounds encoded as in JSON); `space_from_description` rebuilds the space."""
        return self.manifest["observation_space"]

    @property
    def action_space(self) -> dict[str, Any]:
        """{"type": "box", "shape", "dtype", "low", "high"} or {"type": "discrete", "n", "start"}."""
        return self.manifest["action_space"]

    @property
    def kinematics(self) -> dict[str, Any] | None:
        return self.manifest.get("kinematics")

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.observation_space["shape"])

    @property
    def action_shape(self) -> tuple[int, ...]:
        return () if self.action_space["type"] == "discrete" else tuple(self.action_space["shape"])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of `stats`: (F,) for (N, F) observations (pooled over bodies), (C,) for (H, W, C)
        frames (pooled over pixels), else the observation shape."""
        return self.obs_shape[-1:] if len(self.obs_shape) >= 2 else self.obs_shape

    @property
    def episodes(self) -> int:
        return len(self.lengths)

    @property
    def steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def info_keys(self) -> list[str]:
        """Names of the per-step info arrays, with their "info_" prefix (as in `batch`)."""
        return [k for k in (self.shards[0] if self.shards else {}) if k.startswith("info_")]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every shard's arrays joined along time (obs over all observations, the others over all
        steps), in memory: fine for small datasets, a full copy for large ones (use `batch`/`episode`)."""
        if self._joined is None:
            keys = self.shards[0].keys() if self.shards else ()
            self._joined = {k: (self.shards[0][k] if len(self.shards) == 1 else
                                np.concatenate([part[k] for part in self.shards], axis=0)) for k in keys}
        return self._joined

    def release(self, shard: int | None = None) -> None:
        """Hand the memory-mapped pages read so far (of one shard, or of every shard read since the
        last call) back to the OS; a no-op for data read into memory. Worth calling every few
        batches: the kernel maps up to 64 KB around every page a random window reads, so 100
        batches of 32 windows leave about 0.7 GB of a large dataset resident."""
        for k in (sorted(self._touched) if shard is None else [shard]):
            _release(self._maps[k])
        self._touched = set() if shard is None else self._touched - {shard}

    def __len__(self) -> int:
        return self.episodes

    def __repr__(self) -> str:
        return (f"TrajectoryDataset({str(self.path)!r}, env_id={self.manifest.get('env_id')!r}, "
                f"episodes={self.episodes}, steps={self.steps}, obs_shape={self.obs_shape})")

    def _episode_index(self, i) -> int:
        try:
            i = operator.index(i)
        except TypeError as err:
            raise LoopWMError(f"episode index must be an integer, got {i!r}") from err
        if not -self.episodes <= i < self.episodes:
            raise LoopWMError(f"episode {i} does not exist: the dataset holds {self.episodes} episodes")
        return i % self.episodes

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode i: obs (T+1, ...), the others (T, ...), as fresh writable arrays (copies: the
        dataset's own arrays may be read-only maps of its files)."""
        i = self._episode_index(i)
        o, s, n = self.obs_start[i], self.step_start[i], self.lengths[i]
        part = self.shards[self.episode_shard[i]]
        self._touched.add(int(self.episode_shard[i]))
        return {key: np.array(arr[o : o + n + 1] if key == "obs" else arr[s : s + n]) for key, arr in part.items()}

    def _episode_indices(self, episodes: Iterable[int]) -> np.ndarray:
        idx = np.asarray(list(episodes) if not isinstance(episodes, np.ndarray) else episodes).reshape(-1)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.dtype.kind not in "iu":
            raise LoopWMError(f"episode indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.min() < 0 or idx.max() >= self.episodes:
            raise LoopWMError(f"episode indices must lie in [0, {self.episodes}), got {idx.min()}..{idx.max()}")
        return idx

    # ----- loading -----
    @classmethod
    def load(cls, path: str | Path, verify: bool = True, mmap: bool = True) -> "TrajectoryDataset":
        """Load and validate a dataset folder; every problem raises a LoopWMError saying what to do.

        verify=True also checks every shard's sha256 against the manifest (a streamed read of each file).
        mmap=True maps the shards read-only instead of reading them (see the class docstring); the
        checks run either way, in chunks, and the pages they touch are released afterwards.
        """
        path = Path(path)
        if not path.exists():
            raise LoopWMError(f"dataset folder not found: {path}; create one with `loopwm collect --out {path}`")
        if not path.is_dir():
            raise LoopWMError(f"{path} is a file, not a dataset folder; pass the folder that holds manifest.json")
        manifest = read_manifest(path)
        if manifest is None:
            raise LoopWMError(f"{path} has no manifest.json: it is not a loopwm dataset (or its collection never "
                              "started); run `loopwm collect` to create one")
        if not manifest["shards"]:
            raise LoopWMError(f"dataset {path} holds no shards yet (its collection stopped before the first shard); "
                              "run the same `loopwm collect` command again to fill it")
        if mmap:
            _allow_open_files(len(manifest["shards"]) + 256)
        parts: list[dict[str, np.ndarray]] = []
        maps: list = []
        first_episode = 0
        info_dtypes = None
        for entry in manifest["shards"]:
            shard = path / entry["file"]
            if not shard.is_file():
                raise LoopWMError(f"shard {shard} listed in the manifest is missing; re-run collect into a new folder "
                                  "(or remove its manifest entry to keep the other shards)")
            if verify and sha256_file(shard) != entry["sha256"]:
                raise LoopWMError(f"shard {shard} is corrupt (checksum mismatch); re-run collect to rewrite it, "
                                  "or delete it and its manifest entry")
            shard_maps: list = []
            arrays = _read_npz(shard, mmap=mmap, maps=shard_maps)
            if info_dtypes is None:
                info_dtypes = _info_dtypes(manifest, arrays)
            _check_shard(shard, arrays, entry, manifest, first_episode, info_dtypes)
            _release(shard_maps)  # the checks touched every page; keep only what batches will touch
            maps.append(shard_maps)
            first_episode += entry["episodes"]
            parts.append(arrays)
        totals = (manifest.get("episodes"), manifest.get("steps"))
        if totals != (first_episode, sum(s["steps"] for s in manifest["shards"])):
            raise LoopWMError(f"{path / MANIFEST} is damaged: its totals {totals} disagree with its shard entries; "
                              "re-collect the dataset into a new folder")
        return cls(path, manifest, parts, maps)

    # ----- splits, statistics, windows, batches -----
    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Split episodes (never steps) into sorted (train, val) index arrays, deterministically from `seed`.

        With >= 2 episodes and val_fraction > 0, each side gets at least one episode.
        """
        if not 0 <= val_fraction < 1:
            raise LoopWMError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = self.episodes
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def stats(self, episodes: Iterable[int]) -> dict[str, np.ndarray]:
        """Mean and std (float64) of observations and of one-step changes obs[t+1] - obs[t] over `episodes`.

        Keys obs_mean, obs_std, delta_mean, delta_std, each of shape `feature_shape`: for (N, F)
        observations the statistics pool over bodies, so they have shape (F,); reward_mean and
        reward_std are scalars (0-d arrays).
        """
        idx = self._episode_indices(episodes)
        if idx.size == 0:
            raise LoopWMError("statistics need at least one episode")
        feat = self.feature_shape
        acc = {k: np.zeros((3, *feat)) for k in ("obs", "delta")}  # count, sum, sum of squares
        acc["reward"] = np.zeros((3,))

        def add(key: str, x: np.ndarray) -> None:
            x = x.astype(np.float64).reshape(-1, *feat)
            acc[key] += np.stack([np.full(feat, len(x), dtype=np.float64), x.sum(0), (x * x).sum(0)])

        # episode by episode within each shard, in chunks of observations: a float64 copy of a whole
        # dataset of frames would not fit in memory, and a mapped shard should not become resident
        chunk = max(2, 2**22 // max(1, int(np.prod(self.obs_shape))))
        for n, i in enumerate(idx):
            if n and self.episode_shard[i] != self.episode_shard[idx[n - 1]]:
                self.release(int(self.episode_shard[idx[n - 1]]))  # done with that shard's pages
            obs = self.shards[self.episode_shard[i]]["obs"]
            self._touched.add(int(self.episode_shard[i]))
            first, n_obs = int(self.obs_start[i]), int(self.lengths[i]) + 1
            r = np.asarray(self.shards[self.episode_shard[i]]["reward"][self.step_start[i] : self.step_start[i] + n_obs - 1],
                           dtype=np.float64)
            acc["reward"] += np.array([r.size, r.sum(), (r * r).sum()])
            for lo in range(0, n_obs, chunk):
                # overlap chunks by one observation so every delta obs[t+1] - obs[t] is counted once
                part = obs[first + max(lo - 1, 0) : first + min(lo + chunk, n_obs)]
                add("obs", part[1:] if lo else part)
                if len(part) > 1:
                    add("delta", part[1:].astype(np.float64) - part[:-1])
        self.release()
        out = {}
        for key in ("obs", "delta", "reward"):
            n, s1, s2 = acc[key]
            n = np.maximum(n, 1)
            mean = s1 / n
            out[f"{key}_mean"], out[f"{key}_std"] = mean, np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
        return out

    def windows(self, episodes: Iterable[int], length: int) -> np.ndarray:
        """Every window of `length` transitions inside one of `episodes`, never crossing an episode end.

        Returns an int64 array (M, 3) of rows (episode, start, length), ordered by episode then start;
        M = sum(max(T_e - length + 1, 0)). Episodes shorter than `length` contribute nothing.
        """
        index = self.window_index(episodes, length)
        return index.take(np.arange(len(index)))

    def batch(self, windows: np.ndarray, length: int | None = None) -> dict[str, np.ndarray]:
        """Arrays for windows of one length, gathered with vectorised indexing.

        `windows`: rows (episode, start, length) from `windows()`, or (episode, start) pairs with `length`
        given. Returns obs (B, L+1, *obs_shape) and, each (B, L, ...): action, reward, terminated,
        truncated and the info_* arrays.
        """
        w = np.asarray(windows)
        if w.ndim != 2 or w.shape[1] not in (2, 3) or w.dtype.kind not in "iu":
            raise LoopWMError(f"batch needs integer rows (episode, start[, length]), got an array {w.dtype} {w.shape}")
        w = w.astype(np.int64)
        if length is None:
            if w.shape[1] != 3 or len(w) == 0:
                raise LoopWMError("batch needs the window length: pass rows from windows() or length=")
            length = int(w[0, 2])
        if w.shape[1] == 3 and not np.all(w[:, 2] == length):
            raise LoopWMError("a batch needs windows of one length")
        if length < 1:
            raise LoopWMError(f"window length must be >= 1, got {length}")
        ep, start = w[:, 0], w[:, 1]
        if len(w) and (ep.min() < 0 or ep.max() >= self.episodes or start.min() < 0
                       or np.any(start + length > self.lengths[np.clip(ep, 0, self.episodes - 1)])):
            raise LoopWMError(f"batch got a window outside its episode (episodes must lie in [0, {self.episodes}) and "
                              "start + length <= the episode's steps); take windows from windows()")
        obs_rows = (self.obs_start[ep] + start)[:, None] + np.arange(length + 1)  # (B, L+1), rows inside each shard
        step_rows = (self.step_start[ep] + start)[:, None] + np.arange(length)  # (B, L)
        shard = self.episode_shard[ep]  # (B,)
        self._touched.update(np.unique(shard).tolist())
        if len(w) and (shard == shard[0]).all():  # the common case: one gather per array
            part = self.shards[shard[0]]
            return {key: arr[obs_rows if key == "obs" else step_rows] for key, arr in part.items()}
        first = self.shards[0] if self.shards else {}
        out = {key: np.empty((len(w), length + (key == "obs"), *arr.shape[1:]), dtype=arr.dtype) for key, arr in first.items()}
        for k in np.unique(shard):
            rows = shard == k
            for key, arr in self.shards[k].items():
                out[key][rows] = arr[obs_rows[rows] if key == "obs" else step_rows[rows]]
        return out

    def window_index(self, episodes: Iterable[int], length: int) -> "WindowIndex":
        """The windows of `windows(episodes, length)` without materialising them: O(episodes) memory.

        `len(index)` counts them and `index.take(i)` returns rows (episode, start, length) for flat
        window numbers i, in the same order as `windows()`; training samples from it."""
        _check_window_length(length)
        idx = self._episode_indices(episodes)
        return WindowIndex(idx, np.maximum(self.lengths[idx] - length + 1, 0), length)


class WindowIndex:
    """Flat numbering of every window of one length inside a set of episodes (see `window_index`)."""

    def __init__(self, episodes: np.ndarray, counts: np.ndarray, length: int):
        keep = counts > 0
        self.episodes, self.length = episodes[keep], int(length)
        self.ends = np.cumsum(counts[keep])  # window numbers in [firsts[j], ends[j]) belong to episodes[j]
        self.firsts = self.ends - counts[keep]

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def take(self, i) -> np.ndarray:
        """Rows (episode, start, length), int64 (len(i), 3), for window numbers i in [0, len)."""
        i = np.asarray(i, dtype=np.int64).reshape(-1)
        if len(i) and (i.min() < 0 or i.max() >= len(self)):
            raise LoopWMError(f"window numbers must lie in [0, {len(self)}), got {i.min()}..{i.max()}")
        j = np.searchsorted(self.ends, i, side="right")
        return np.stack([self.episodes[j], i - self.firsts[j], np.full(len(i), self.length, dtype=np.int64)], axis=1)


def load_dataset(path: str | Path, verify: bool = True, mmap: bool = True) -> TrajectoryDataset:
    """Same as `TrajectoryDataset.load`."""
    return TrajectoryDataset.load(path, verify=verify, mmap=mmap)
