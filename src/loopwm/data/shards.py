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
`LoopWMError` that names the problem (and the shard, episode and step where it applies). The
arrays are memory-mapped where they lie in each shard (`np.savez` stores them uncompressed), so a
dataset larger than memory trains with only the pages its batches touch resident.
"""

from __future__ import annotations

import errno
import math
import mmap
import operator
import struct
import zipfile
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


def _read_npz(shard: Path, mmap: bool = False, maps: list | None = None) -> dict[str, np.ndarray]:
    """The arrays of one shard. With `mmap`, members stored uncompressed (as `np.savez` writes them)
    are mapped read-only in place instead of read, and their mmap objects appended to `maps`."""
    try:
        if mmap:
            return _map_npz(shard, maps if maps is not None else [])
        with open(shard, "rb") as f:  # our own handle, closed even when numpy gives up half-way
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with npz:
                return {k: npz[k] for k in npz.files}
    except OSError as err:
        if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            raise LoopWMError(f"shard {shard} cannot be memory-mapped ({err}): every mapped shard keeps a file handle "
                              "and a mapping; raise the limit (`ulimit -n`), collect with a larger --shard-episodes, "
                              "or load with mmap=False") from err
        raise LoopWMError(f"shard {shard} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt: "
                          "delete the dataset folder (or this shard and its manifest entry) and re-run collect") from err
    except Exception as err:  # zipfile, zlib, numpy format and OS errors all mean the same thing here
        raise LoopWMError(f"shard {shard} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt: "
                          "delete the dataset folder (or this shard and its manifest entry) and re-run collect") from err


_ZIP_LOCAL_HEADER = 30  # bytes before a member's name in a zip local file header


def _map_npz(shard: Path, maps: list) -> dict[str, np.ndarray]:
    """Memory-map the members of an .npz archive without reading them.

    An .npz is a zip of .npy files; `np.savez` stores them uncompressed, so each array's bytes lie
    contiguously in the archive after its zip and .npy headers. We find that offset and map it, so a
    dataset larger than memory costs only the pages a batch touches. Compressed members (a shard
    written by other tools with `savez_compressed`) are read instead.
    """
    out: dict[str, np.ndarray] = {}
    whole = None
    with open(shard, "rb") as f, zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            f.seek(info.header_offset)
            header = f.read(_ZIP_LOCAL_HEADER)
            if len(header) != _ZIP_LOCAL_HEADER or header[:4] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename} has no valid zip header")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            f.seek(info.header_offset + _ZIP_LOCAL_HEADER + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f"member {info.filename} has .npy format version {version}")
            shape, fortran, dtype = read_header[version](f)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename} holds Python objects, which loopwm never unpickles")
            start = f.tell()
            count = math.prod(shape)
            if start + count * dtype.itemsize > info.header_offset + _ZIP_LOCAL_HEADER + name_len + extra_len + info.file_size:
                raise ValueError(f"member {info.filename} is shorter than its header says")
            if count == 0:
                out[name] = np.zeros(shape, dtype=dtype)
                continue
            if whole is None:  # one map per shard file, shared by its arrays (each map holds a file handle)
                whole = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                maps.append(whole)
            arr = np.frombuffer(whole, dtype=dtype, count=count, offset=start)
            out[name] = arr.reshape(shape, order="F" if fortran else "C")
    return out


def _allow_open_files(n: int) -> None:
    """Raise this process's soft limit on open files towards `n` (each mapped shard holds one),
    within the hard limit; where that is not enough, mapping reports the problem and the fixes."""
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        target = n if hard == resource.RLIM_INFINITY else min(n, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def _release(maps: list) -> None:
    """Drop the pages of `maps` from this process's resident memory (the OS page cache keeps them,
    so touching them again costs a cheap minor fault, not a disk read)."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    for m in maps:
        try:
            m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map or a platform without madvise: nothing to release
            pass


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
        row = _first_non_finite_row(arr)
        if row is not None:
            local = int(np.searchsorted(starts, row, side="right") - 1)
            raise LoopWMError(
                f"shard {shard}: {key} holds NaN or inf in episode {first_episode + local} of the dataset "
                f"(episode {local} of this shard), {'observation' if key == 'obs' else 'step'} {row - int(starts[local])}; "
                "the environment produced non-finite values: fix it (or drop that shard and its manifest entry) and re-collect")


def _first_non_finite_row(arr: np.ndarray, chunk_bytes: int = 1 << 26) -> int | None:
    """Index of the first row of `arr` holding NaN or inf, or None; reads in chunks of ~64 MB so a
    memory-mapped shard is checked without a full-size temporary."""
    rows = max(1, chunk_bytes // max(1, arr[:1].nbytes))
    for lo in range(0, len(arr), rows):
        part = arr[lo : lo + rows]
        finite = np.isfinite(part.reshape(len(part), -1)).all(axis=1)
        if not finite.all():
            return lo + int(np.argmin(finite))
    return None


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
        observations the statistics pool over bodies, so they have shape (F,).
        """
        idx = self._episode_indices(episodes)
        if idx.size == 0:
            raise LoopWMError("statistics need at least one episode")
        feat = self.feature_shape
        acc = {k: np.zeros((3, *feat)) for k in ("obs", "delta")}  # count, sum, sum of squares

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
            for lo in range(0, n_obs, chunk):
                # overlap chunks by one observation so every delta obs[t+1] - obs[t] is counted once
                part = obs[first + max(lo - 1, 0) : first + min(lo + chunk, n_obs)]
                add("obs", part[1:] if lo else part)
                if len(part) > 1:
                    add("delta", part[1:].astype(np.float64) - part[:-1])
        self.release()
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
