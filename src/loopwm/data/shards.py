"""Datasets of trajectories: shards of whole episodes plus a manifest, validated on load.

A dataset is a folder::

    manifest.json        what was collected, how, and one entry per shard with its sha256
    shard_00000.npz      whole episodes, concatenated along time (np.savez; loaded without pickle)
    shard_00001.npz      ...

Shard contents (E episodes of T_i steps each; S = sum T_i)::

    episode_lengths  int64   (E,)                  the T_i, each >= 1
    obs              float32 (S + E, *obs_shape)   T_i + 1 observations per episode: the first, then one per step
                     (uint8 when the observation space is uint8, as camera frames (H, W, C) are)
    action           float32 (S, *act_shape) for a Box action space, int64 (S,) for Discrete
    reward           float32 (S,)
    terminated       bool    (S,)
    truncated        bool    (S,)
    info_<key>       (S,)    one per numeric scalar the environment put in `info` on its first step:
                             int32 for integers, float32 for floats, bool for booleans
                             (the built-in world gives info_contacts, info_solver_iterations, info_converged)

Manifest (JSON, ``schema_version`` 1)::

    schema_version, format ("loopwm-trajectories"), created_by ("loopwm X.Y.Z"),
    env_id, env_kwargs, policy, seed,
    observation_space  {"type": "box", "shape", "dtype", "low", "high"}
    action_space       {"type": "box", "shape", "dtype", "low", "high"} or {"type": "discrete", "n", "start", "shape": []}
    kinematics         dict from env.unwrapped.kinematics, or null
    info_keys          ["contacts", ...]  and info_dtypes {"contacts": "int32", ...}
    shards             [{"file", "episodes", "steps", "sha256"}, ...]
    episodes, steps    totals over the shards

Space bounds are nested lists of numbers; JSON has no infinity, so +-inf are written as the strings
"inf" and "-inf" (`encode_bounds` / `decode_bounds` round-trip every float32/float64 bound exactly).

The manifest is rewritten (atomically) after every shard, so a killed collection leaves a valid,
smaller dataset, and collecting again into the same folder continues where it stopped.

Loading: ``TrajectoryDataset.load(path, verify=True)`` checks everything above and raises a
`LoopWMError` that names the problem (and the shard, episode and step where it applies).
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from loopwm.utils import LoopWMError, atomic_save, atomic_write_json, read_json, sha256_file

SCHEMA_VERSION = 1
FORMAT = "loopwm-trajectories"
MANIFEST = "manifest.json"
STEP_KEYS = ("action", "reward", "terminated", "truncated")
INFO_DTYPES = ("int32", "float32", "bool")

_SHARD_ENTRY_FIELDS = {"file": str, "episodes": int, "steps": int, "sha256": str}


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.npz"


# ----- spaces <-> JSON -----
def encode_bounds(values) -> Any:
    """Space bounds as JSON-ready nested lists; non-finite values become "inf", "-inf" or "nan"."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        return arr.tolist()

    def enc(x):
        if isinstance(x, list):
            return [enc(v) for v in x]
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))

    return enc(arr.astype(np.float64).tolist())


def decode_bounds(values, dtype="float32") -> np.ndarray:
    """Inverse of `encode_bounds` (null is read as NaN)."""
    def dec(x):
        if isinstance(x, list):
            return [dec(v) for v in x]
        if x is None:
            return math.nan
        if isinstance(x, str):
            if x.lower() not in ("inf", "+inf", "-inf", "nan", "infinity", "-infinity"):
                raise LoopWMError(f"space bound {x!r} is not a number; the dataset manifest is damaged")
            return float(x)
        return x

    try:
        return np.asarray(dec(values), dtype=np.float64).astype(dtype)
    except (TypeError, ValueError) as err:
        raise LoopWMError(f"space bounds {str(values)[:80]} cannot be read ({err}); the dataset manifest is damaged") from err


def describe_space(space) -> dict[str, Any]:
    """JSON description of a Gymnasium Box or Discrete space (see the module docstring)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return {"type": "box", "shape": [int(s) for s in space.shape], "dtype": str(space.dtype),
                "low": encode_bounds(space.low), "high": encode_bounds(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start), "shape": []}
    raise LoopWMError(f"unsupported space {space}: loopwm records Box and Discrete spaces "
                      "(wrap others first, e.g. with gymnasium.wrappers.FlattenObservation)")


def space_from_description(desc: dict[str, Any]):
    """The Gymnasium space a `describe_space` dict stands for (exact bounds and dtype)."""
    from gymnasium import spaces

    kind = desc.get("type", "box")
    if kind == "discrete":
        return spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)))
    if kind == "box":
        dtype = np.dtype(desc.get("dtype", "float32"))
        shape = tuple(desc["shape"])
        low, high = decode_bounds(desc["low"], dtype), decode_bounds(desc["high"], dtype)
        return spaces.Box(np.broadcast_to(low, shape), np.broadcast_to(high, shape), shape=shape, dtype=dtype)
    raise LoopWMError(f"unknown space type {kind!r} in a dataset manifest; it was written by a newer loopwm or is damaged")


# ----- writing -----
def write_shard(path: str | Path, episodes: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Write whole episodes (dicts as made by `collect.run_episode`) as one shard, atomically.

    Returns the shard's manifest entry {"file", "episodes", "steps", "sha256"}.
    """
    path = Path(path)
    if not episodes:
        raise LoopWMError("a shard needs at least one episode")
    keys = list(episodes[0])
    for i, ep in enumerate(episodes):
        if sorted(ep) != sorted(keys):
            raise LoopWMError(f"episode {i} of a shard has arrays {sorted(ep)}, episode 0 has {sorted(keys)}")
    arrays = {"episode_lengths": np.asarray([len(ep["action"]) for ep in episodes], dtype=np.int64)}
    for key in keys:
        arrays[key] = np.concatenate([ep[key] for ep in episodes], axis=0)

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
            np.savez(f, **arrays)

    atomic_save(path, writer)
    return {"file": path.name, "episodes": len(episodes), "steps": int(arrays["episode_lengths"].sum()),
            "sha256": sha256_file(path)}


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Recompute the totals and write manifest.json atomically."""
    manifest["episodes"] = sum(s["episodes"] for s in manifest["shards"])
    manifest["steps"] = sum(s["steps"] for s in manifest["shards"])
    atomic_write_json(Path(path) / MANIFEST, manifest)


# ----- reading -----
def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The validated manifest of dataset folder `path`, or None when it has none."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        return None
    manifest = read_json(path / MANIFEST, "dataset manifest")
    check_manifest(path, manifest)
    return manifest


def check_manifest(path: Path, manifest: Any) -> None:
    """Raise a LoopWMError unless `manifest` is a well-formed manifest this loopwm can read."""
    where = Path(path) / MANIFEST
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LoopWMError(f"{where} is not a loopwm dataset manifest (its format field is not {FORMAT!r}); "
                          "this folder is not a loopwm dataset: point at another folder or use a new --out")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LoopWMError(f"{where} has an invalid schema_version {version!r}; the manifest is damaged: re-collect the dataset")
    if version > SCHEMA_VERSION:
        raise LoopWMError(f"dataset {path} has schema version {version}, written by a newer loopwm (this one reads "
                          f"version {SCHEMA_VERSION}); upgrade loopwm to read it")

    def damaged(what: str) -> LoopWMError:
        return LoopWMError(f"{where} is damaged: {what}; re-collect the dataset into a new folder")

    for field in ("observation_space", "action_space"):
        space = manifest.get(field)
        if not isinstance(space, dict) or not isinstance(space.get("shape"), list):
            raise damaged(f"{field} is missing or has no shape")
    if manifest["action_space"].get("type") not in ("box", "discrete"):
        raise damaged(f"action_space type {manifest['action_space'].get('type')!r} is unknown")
    if manifest["action_space"]["type"] == "discrete" and not isinstance(manifest["action_space"].get("n"), int):
        raise damaged("the discrete action_space has no integer n")
    info_keys, info_dtypes = manifest.get("info_keys"), manifest.get("info_dtypes")
    if info_keys is not None and (not isinstance(info_keys, list) or not all(isinstance(k, str) for k in info_keys)):
        raise damaged("info_keys is not a list of names")
    if info_dtypes is not None and (not isinstance(info_dtypes, dict) or not all(isinstance(v, str) for v in info_dtypes.values())):
        raise damaged("info_dtypes is not a mapping of names to dtype strings")
    if manifest.get("kinematics") is not None and not isinstance(manifest["kinematics"], dict):
        raise damaged("kinematics is neither null nor a mapping")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise damaged("the shards list is missing")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in _SHARD_ENTRY_FIELDS.items()):
            raise damaged(f"shard entry {i} lacks one of {list(_SHARD_ENTRY_FIELDS)}")
        if Path(entry["file"]).name != entry["file"] or entry["file"] in ("", ".", ".."):
            raise damaged(f"shard entry {i} names {entry['file']!r}, which is not a file inside the dataset folder")


def _read_npz(shard: Path) -> dict[str, np.ndarray]:
    try:
        with open(shard, "rb") as f:  # our own handle, closed even when numpy gives up half-way
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with npz:
                return {k: npz[k] for k in npz.files}
    except Exception as err:  # zipfile, zlib, numpy format and OS errors all mean the same thing here
        raise LoopWMError(f"shard {shard} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt: "
                          "delete the dataset folder (or this shard and its manifest entry) and re-run collect") from err


def _starts(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out


def _check_shard(shard: Path, arrays: dict[str, np.ndarray], entry: dict, manifest: dict, first_episode: int,
                 info_dtypes: dict[str, str]) -> None:
    """Shapes, dtypes and finiteness of one shard; converts arrays to their canonical dtypes in place."""
    def bad(what: str) -> LoopWMError:
        return LoopWMError(f"shard {shard}: {what}; the shard is damaged or was edited: delete the dataset folder "
                           "(or this shard and its manifest entry) and re-run collect")

    missing = [k for k in ("episode_lengths", "obs", *STEP_KEYS) if k not in arrays]
    if missing:
        raise bad(f"it lacks the arrays {missing} (is it a loopwm shard?)")
    ep_len = arrays["episode_lengths"]
    if ep_len.ndim != 1 or ep_len.dtype.kind not in "iu" or len(ep_len) == 0 or (ep_len < 1).any():
        raise bad(f"episode_lengths must be a non-empty 1-D array of integers >= 1, got {ep_len.dtype} {ep_len.shape}")
    ep_len = arrays["episode_lengths"] = ep_len.astype(np.int64)
    n_ep, n_steps = len(ep_len), int(ep_len.sum())
    n_obs = n_steps + n_ep
    if n_ep != entry["episodes"] or n_steps != entry["steps"]:
        raise bad(f"it holds {n_ep} episodes / {n_steps} steps but the manifest says {entry['episodes']} / {entry['steps']}")

    obs_shape = tuple(manifest["observation_space"]["shape"])
    act = manifest["action_space"]
    act_shape = () if act["type"] == "discrete" else tuple(act["shape"])
    pixels = manifest["observation_space"].get("dtype") == "uint8"
    expected = {  # key: (shape, accepted dtype kinds, canonical dtype)
        "obs": ((n_obs, *obs_shape), "u" if pixels else "f", np.uint8 if pixels else np.float32),
        "action": ((n_steps, *act_shape), "iu" if act["type"] == "discrete" else "f",
                   np.int64 if act["type"] == "discrete" else np.float32),
        "reward": ((n_steps,), "fiu", np.float32),
        "terminated": ((n_steps,), "b", np.bool_),
        "truncated": ((n_steps,), "b", np.bool_),
    }
    for key, dtype in info_dtypes.items():
        expected[f"info_{key}"] = ((n_steps,), "biuf", np.dtype(dtype))
    for key in arrays:
        if key != "episode_lengths" and key not in expected:
            raise bad(f"it holds an array {key!r} that the manifest does not list")
    for key, (shape, kinds, dtype) in expected.items():
        arr = arrays.get(key)
        if arr is None:
            raise bad(f"it lacks the array {key!r} that the manifest lists")
        if arr.shape != shape:
            raise bad(f"{key} has shape {arr.shape}, expected {shape} from the manifest and episode_lengths")
        if arr.dtype.kind not in kinds:
            raise bad(f"{key} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        arrays[key] = arr.astype(dtype, copy=False)

    if act["type"] == "discrete" and n_steps:
        lo = int(act.get("start", 0))
        a = arrays["action"]
        if a.min() < lo or a.max() >= lo + int(act["n"]):
            raise bad(f"action holds values outside the {act['n']} discrete actions starting at {lo}")
    obs_start = _starts(ep_len + 1)
    step_start = _starts(ep_len)
    for key, starts in (("obs", obs_start), ("action", step_start), ("reward", step_start)):
        arr = arrays[key]
        if arr.dtype.kind != "f":
            continue
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            local = int(np.searchsorted(starts, row, side="right") - 1)
            raise LoopWMError(
                f"shard {shard}: {key} holds NaN or inf in episode {first_episode + local} of the dataset "
                f"(episode {local} of this shard), {'observation' if key == 'obs' else 'step'} {row - int(starts[local])}; "
                "the environment produced non-finite values: fix it (or drop that shard and its manifest entry) and re-collect")


def _info_dtypes(manifest: dict, first_shard: dict[str, np.ndarray]) -> dict[str, str]:
    """Info arrays every shard must hold: the manifest's info_keys (with info_dtypes when given), or
    for a manifest without them (an early schema-1 writer), whatever the first shard holds."""
    if manifest.get("info_keys") is None:
        return {k[5:]: str(v.dtype) for k, v in first_shard.items() if k.startswith("info_") and v.dtype.kind in "biuf"}
    given = manifest.get("info_dtypes") or {}
    out = {}
    for key in manifest["info_keys"]:
        dtype = given.get(key) or (str(first_shard[f"info_{key}"].dtype) if f"info_{key}" in first_shard else "float32")
        try:
            np.dtype(dtype)
        except TypeError as err:
            raise LoopWMError(f"manifest info_dtypes gives {key!r} the unknown dtype {dtype!r}; the manifest is damaged") from err
        out[str(key)] = dtype
    return out


class TrajectoryDataset:
    """A loaded, validated dataset held in memory.

    Example::

        ds = TrajectoryDataset.load("data/balls")
        train_idx, val_idx = ds.split(0.1)
        stats = ds.stats(train_idx)              # obs_mean/obs_std/delta_mean/delta_std, shape (F,)
        windows = ds.windows(train_idx, 12)      # (M, 3) rows: episode, start, length
        batch = ds.batch(windows[:32])           # obs (32, 13, N, F), action (32, 12, 2), reward (32, 12), ...

    `arrays` holds every shard's arrays concatenated (obs over all episodes' observations, the others
    over all steps); `obs_start`, `step_start` and `lengths` (per episode) index into them.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], lengths: np.ndarray):
        self.path = Path(path)
        self.manifest = manifest
        self.arrays = arrays
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.obs_start = _starts(self.lengths + 1)
        self.step_start = _starts(self.lengths)
        # episode of each observation row, for statistics without a Python loop over episodes
        self._obs_episode = np.repeat(np.arange(len(self.lengths)), self.lengths + 1)

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
        return [k for k in self.arrays if k.startswith("info_")]

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
        """Episode i: obs (T+1, ...), the others (T, ...). Views into the dataset's arrays: copy before editing."""
        i = self._episode_index(i)
        o, s, n = self.obs_start[i], self.step_start[i], self.lengths[i]
        out = {"obs": self.arrays["obs"][o : o + n + 1]}
        for key, arr in self.arrays.items():
            if key != "obs":
                out[key] = arr[s : s + n]
        return out

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
    def load(cls, path: str | Path, verify: bool = True) -> "TrajectoryDataset":
        """Load and validate a dataset folder; every problem raises a LoopWMError saying what to do.

        verify=True also checks every shard's sha256 against the manifest (reads each file twice).
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
        parts: dict[str, list[np.ndarray]] = {}
        lengths, first_episode = [], 0
        info_dtypes = None
        for entry in manifest["shards"]:
            shard = path / entry["file"]
            if not shard.is_file():
                raise LoopWMError(f"shard {shard} listed in the manifest is missing; re-run collect into a new folder "
                                  "(or remove its manifest entry to keep the other shards)")
            if verify and sha256_file(shard) != entry["sha256"]:
                raise LoopWMError(f"shard {shard} is corrupt (checksum mismatch); re-run collect to rewrite it, "
                                  "or delete it and its manifest entry")
            arrays = _read_npz(shard)
            if info_dtypes is None:
                info_dtypes = _info_dtypes(manifest, arrays)
            _check_shard(shard, arrays, entry, manifest, first_episode, info_dtypes)
            first_episode += entry["episodes"]
            lengths.append(arrays.pop("episode_lengths"))
            for key, arr in arrays.items():
                parts.setdefault(key, []).append(arr)
        totals = (manifest.get("episodes"), manifest.get("steps"))
        if totals != (first_episode, sum(s["steps"] for s in manifest["shards"])):
            raise LoopWMError(f"{path / MANIFEST} is damaged: its totals {totals} disagree with its shard entries; "
                              "re-collect the dataset into a new folder")
        joined = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
        return cls(path, manifest, joined, np.concatenate(lengths))

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
        observations the statistics pool over bodies, so they have shape (F,).
        """
        idx = self._episode_indices(episodes)
        if idx.size == 0:
            raise LoopWMError("statistics need at least one episode")
        feat = self.feature_shape
        obs = self.arrays["obs"]
        rows = np.flatnonzero(np.isin(self._obs_episode, idx))
        acc = {k: np.zeros((3, *feat)) for k in ("obs", "delta")}  # count, sum, sum of squares

        def add(key: str, x: np.ndarray) -> None:
            x = x.astype(np.float64).reshape(-1, *feat)
            acc[key] += np.stack([np.full(feat, len(x), dtype=np.float64), x.sum(0), (x * x).sum(0)])

        # in chunks of rows: a float64 copy of a whole dataset of frames would not fit in memory
        chunk = max(1, 2**22 // max(1, int(np.prod(obs.shape[1:]))))
        for lo in range(0, len(rows), chunk):
            r = rows[lo : lo + chunk]
            add("obs", obs[r])
            # a delta pairs observation row i with row i + 1 of the same episode
            pair = r[(r + 1 < len(obs))]
            pair = pair[self._obs_episode[pair] == self._obs_episode[pair + 1]]
            if len(pair):
                add("delta", obs[pair + 1].astype(np.float64) - obs[pair])
        out = {}
        for key in ("obs", "delta"):
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
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise LoopWMError(f"window length must be an integer >= 1, got {length!r}")
        idx = self._episode_indices(episodes)
        counts = np.maximum(self.lengths[idx] - length + 1, 0)
        total = int(counts.sum())
        ep = np.repeat(idx, counts)
        start = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.stack([ep, start, np.full(total, length, dtype=np.int64)], axis=1)

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
        steps = np.arange(length)
        obs_rows = (self.obs_start[ep] + start)[:, None] + np.arange(length + 1)  # (B, L+1)
        step_rows = (self.step_start[ep] + start)[:, None] + steps  # (B, L)
        out = {"obs": self.arrays["obs"][obs_rows]}
        for key, arr in self.arrays.items():
            if key != "obs":
                out[key] = arr[step_rows]
        return out


def load_dataset(path: str | Path, verify: bool = True) -> TrajectoryDataset:
    """Same as `TrajectoryDataset.load`."""
    return TrajectoryDataset.load(path, verify=verify)
