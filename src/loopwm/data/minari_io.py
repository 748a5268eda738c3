"""Minari datasets in and out: the Gymnasium ecosystem's format for offline RL data.

    loopwm import minari PATH_OR_ID --out data/x        a Minari dataset -> a loopwm dataset
    loopwm export minari data/x --dataset-id ns/x-v0    a loopwm dataset -> a Minari dataset

An imported dataset is a loopwm dataset like a collected one (shards, manifest with checksums,
spaces and normalisation statistics) whose manifest also names its source; episodes keep their
order and their termination and truncation flags. Box and Discrete spaces are taken; any other is
refused by name, as in collection. `minari` (with its `create` and `hdf5` extras) is the optional
extra `loopwm[minari]`; nothing here is imported without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator

import numpy as np
import tyro

from loopwm.utils import LoopWMError


def _minari():
    try:
        import minari
    except ImportError as err:
        raise LoopWMError("Minari datasets need the minari package: pip install 'loopwm[minari]'") from err
    return minari


@contextlib.contextmanager
def _datasets_root(root: str | Path | None) -> Iterator[None]:
    """Point Minari at `root` (its MINARI_DATASETS_PATH) for the duration; None keeps its default."""
    if root is None:
        yield
        return
    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


def open_minari(source: str | Path, root: str | Path | None = None):
    """A Minari dataset from a folder (the one holding `data/metadata.json`, or `data/` itself) or
    from a dataset id in Minari's local store (`root`, else MINARI_DATASETS_PATH, else ~/.minari)."""
    minari = _minari()
    path = Path(source)
    for data in (path / "data", path):
        if (data / "metadata.json").is_file():
            return minari.MinariDataset(data)
    with _datasets_root(root):
        try:
            return minari.load_dataset(str(source))
        except (FileNotFoundError, ValueError) as err:
            raise LoopWMError(f"no Minari dataset at {str(source)!r}: give the dataset's folder (with data/metadata.json) "
                              "or the id of a dataset in the local Minari store (downloads are not made here)") from err


def _space(space, what: str) -> dict:
    from loopwm.data.shards import describe_space

    try:
        return describe_space(space)
    except LoopWMError as err:
        raise LoopWMError(f"the Minari dataset's {what} is {space}: loopwm models Box and Discrete spaces only "
                          "(flatten the dataset's observations first)") from err


def import_minari(source: str | Path, out: str | Path, root: str | Path | None = None, shard_episodes: int = 50) -> Path:
    """Write the Minari dataset `source` as a loopwm dataset in the new folder `out`; returns `out`.

    The folder appears whole or not at all (written next to it, then renamed)."""
    from loopwm import __version__
    from loopwm.data.dataset import TrajectoryDataset
    from loopwm.data.shards import FORMAT, SCHEMA_VERSION, shard_name, write_manifest, write_shard

    out = Path(out)
    if out.exists():
        raise LoopWMError(f"--out {out} already exists; import into a new folder")
    ds = open_minari(source, root)
    spaces = {"observation_space": _space(ds.spec.observation_space, "observation space"),
              "action_space": _space(ds.spec.action_space, "action space")}
    if spaces["observation_space"]["type"] != "box":
        raise LoopWMError(f"the Minari dataset's observation space is {ds.spec.observation_space}: loopwm models Box "
                          "observations")
    env_spec = ds.spec.env_spec
    discrete = spaces["action_space"]["type"] == "discrete"
    obs_dtype = np.uint8 if np.dtype(spaces["observation_space"]["dtype"]) == np.uint8 else np.float32
    manifest = {
        "schema_version": SCHEMA_VERSION, "format": FORMAT, "created_by": f"loopwm {__version__}",
        "env_id": env_spec.id if env_spec is not None else f"minari:{ds.spec.dataset_id}",
        "env_kwargs": dict(env_spec.kwargs) if env_spec is not None and _plain(env_spec.kwargs) else {},
        "policy": f"minari:{ds.storage.metadata.get('algorithm_name') or 'unknown'}", "seed": None, "max_steps": None,
        "obs": "state", "pixel_size": None, **spaces, "kinematics": None, "info_keys": [], "info_dtypes": {},
        "shards": [], "source": {"minari": ds.spec.dataset_id, "minari_version": ds.spec.minari_version},
    }
    tmp = out.with_name(f".{out.name}.importing")
    if tmp.exists():
        shutil.rmtree(tmp)  # a killed import's leftovers
    tmp.mkdir(parents=True)
    try:
        buffer: list[dict[str, np.ndarray]] = []
        total = ds.total_episodes
        for i, ep in enumerate(ds.iterate_episodes()):
            obs = np.asarray(ep.observations)
            if not isinstance(ep.observations, np.ndarray) or obs.shape[1:] != tuple(spaces["observation_space"]["shape"]):
                raise LoopWMError(f"Minari episode {ep.id} has observations of shape {obs.shape}; expected (T+1, "
                                  f"{tuple(spaces['observation_space']['shape'])})")
            T = len(ep.actions)
            if T < 1 or len(obs) != T + 1:
                raise LoopWMError(f"Minari episode {ep.id} has {len(obs)} observations for {T} actions (want T + 1 for T >= 1)")
            buffer.append({
                "obs": obs.astype(obs_dtype),
                "action": np.asarray(ep.actions, dtype=np.int64 if discrete else np.float32).reshape(
                    T, *(() if discrete else spaces["action_space"]["shape"])),
                "reward": np.asarray(ep.rewards, dtype=np.float32).reshape(T),
                "terminated": np.asarray(ep.terminations, dtype=bool).reshape(T),
                "truncated": np.asarray(ep.truncations, dtype=bool).reshape(T),
            })
            if len(buffer) == shard_episodes or i == total - 1:
                manifest["shards"].append(write_shard(tmp / shard_name(len(manifest["shards"])), buffer))
                buffer = []
        if not manifest["shards"]:
            raise LoopWMError(f"the Minari dataset {ds.spec.dataset_id} holds no episodes")
        write_manifest(tmp, manifest)
        loaded = TrajectoryDataset.load(tmp)  # every check a collected dataset passes
        stats = loaded.stats(range(loaded.episodes))
        manifest["stats"] = {"episodes": loaded.episodes, **{k: [float(x) for x in np.ravel(v)] for k, v in stats.items()}}
        write_manifest(tmp, manifest)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _plain(x) -> bool:
    import json

    try:
        json.dumps(x)
        return True
    except (TypeError, ValueError):
        return False


def export_minari(data: str | Path, dataset_id: str, root: str | Path | None = None, algorithm_name: str | None = None):
    """Write loopwm dataset `data` as the Minari dataset `dataset_id` (in `root`, else Minari's
    default store); returns the MinariDataset."""
    minari = _minari()
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from loopwm.data.dataset import TrajectoryDataset
    from loopwm.data.shards import space_from_description

    ds = TrajectoryDataset.load(data)
    obs_space = space_from_description(ds.observation_space)
    act_space = space_from_description(ds.action_space)
    buffers = []
    for i in range(len(ds)):
        ep = ds.episode(i)
        buffers.append(EpisodeBuffer(id=i, observations=np.asarray(ep["obs"]), actions=np.asarray(ep["action"]),
                                     rewards=[float(r) for r in ep["reward"]],
                                     terminations=[bool(t) for t in ep["terminated"]],
                                     truncations=[bool(t) for t in ep["truncated"]], infos={}))
    env = None
    if not str(ds.env_id).startswith(("python:", "minari:")):
        from gymnasium.envs.registration import EnvSpec

        env = EnvSpec(id=ds.env_id, entry_point=None, kwargs=ds.env_kwargs) if not _registered(ds.env_id) else ds.env_id
    with _datasets_root(root):
        try:
            return minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, algorithm_name=algorithm_name or f"loopwm:{ds.manifest.get('policy')}",
                observation_space=obs_space, action_space=act_space,
                description=f"exported by loopwm from {Path(data).name} ({ds.env_id})")
        except ValueError as err:
            raise LoopWMError(f"Minari refused the export ({err})") from err


def _registered(env_id: str) -> bool:
    import gymnasium as gym

    from loopwm.envs import ENV_IDS

    if env_id in ENV_IDS:
        import loopwm.envs  # noqa: F401 - registers the built-in ids
    return env_id in gym.registry


@dataclass
class ImportConfig:
    """Turn a dataset from another format into a loopwm dataset."""

    format: Annotated[str, tyro.conf.Positional]
    """Source format: minari."""
    source: Annotated[str, tyro.conf.Positional]
    """A Minari dataset folder (holding data/metadata.json) or a dataset id in the local Minari store."""
    out: str = "data/imported"
    """New dataset folder."""
    root: str = ""
    """Minari's local store to look ids up in (empty: MINARI_DATASETS_PATH, else ~/.minari)."""


@dataclass
class ExportConfig:
    """Write a loopwm dataset in another format."""

    format: Annotated[str, tyro.conf.Positional]
    """Target format: minari."""
    data: Annotated[str, tyro.conf.Positional]
    """The loopwm dataset folder to export."""
    dataset_id: str = "loopwm/dataset-v0"
    """Minari dataset id, (namespace/)(env_name/)name-v(version)."""
    root: str = ""
    """Minari's local store to write to (empty: MINARI_DATASETS_PATH, else ~/.minari)."""


def run_import(cfg: ImportConfig) -> Path:
    if cfg.format != "minari":
        raise LoopWMError(f"unknown import format {cfg.format!r}: loopwm imports minari")
    return import_minari(cfg.source, cfg.out, cfg.root or None)


def run_export(cfg: ExportConfig):
    if cfg.format != "minari":
        raise LoopWMError(f"unknown export format {cfg.format!r}: loopwm exports minari")
    return export_minari(cfg.data, cfg.dataset_id, cfg.root or None)
