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

Loading (`loopwm.data.dataset.TrajectoryDataset.load(path, verify=True)`) checks everything above
with the readers here and raises a `LoopWMError` that names the problem (and the shard, episode and
step where it applies). The arrays are memory-mapped where they lie in each shard (`np.savez` stores
them uncompressed), so a dataset larger than memory trains with only the pages its batches touch
resident.
"""

from __future__ import annotations

import errno
import math
import mmap
import struct
import zipfile
from pathlib import Path
from typing import Any

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
