"""Collect episodes from an environment into a dataset folder, with a progress bar and resume.

Episode e is generated from seeds derived from (seed, e) alone (`episode_seeds`), so collecting 100
episodes, stopping (or being killed), and collecting again up to 200 gives exactly the data of one
uninterrupted 200-episode run.

    from loopwm.data import CollectConfig, collect
    collect(CollectConfig(env_id="Pendulum-v1", out="data/pendulum", episodes=50, policy="smooth"))
    collect(env_id="Pendulum-v1", out="data/pendulum", episodes=50)        # the same, with keywords
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loopwm import __version__
from loopwm.data.dataset import TrajectoryDataset
from loopwm.data.shards import (FORMAT, MANIFEST, SCHEMA_VERSION, describe_space, read_manifest, shard_name,
                                write_manifest, write_shard)
from loopwm.utils import LoopWMError


@dataclass
class CollectConfig:
    """Record episodes from an environment into a dataset folder (re-running continues it)."""

    env_id: str = "loopwm/Balls-v0"
    """Gymnasium id: a built-in world (loopwm/Balls-v0, Cradle-v0, Chain-v0, Mixed-v0) or any registered id."""
    out: str = "data/balls"
    """Dataset folder to create or continue (same settings only)."""
    episodes: int = 200
    """Total episodes the folder should hold; episodes already there are kept and not collected again."""
    policy: str = "mixed"
    """Behaviour policy: random, smooth, seek or mixed (a random one of the others per episode)."""
    seed: int = 0
    """Seed of the whole collection (>= 0); episode e depends only on (seed, e)."""
    shard_episodes: int = 50
    """Episodes per shard file; the manifest is updated after each shard."""
    n_bodies: int | None = None
    """Bodies in a built-in world (passed to the environment as n_bodies when set)."""
    max_episode_steps: int | None = None
    """Episode length limit, passed to the environment (gymnasium's TimeLimit) when set."""
    max_steps: int | None = None
    """Cap on steps per episode applied by the collector; a capped episode's last step is marked truncated."""
    env_args: str = ""
    """Other keyword arguments for the environment, as a JSON object, e.g. '{"rail_radius": 0.005}'
    (recorded in the manifest with n_bodies and max_episode_steps)."""
    obs: str = "state"
    """Observations to record: "state" (the environment's own vectors) or "pixels" (rendered RGB
    frames, resized to --pixel-size; any environment that renders rgb_array)."""
    pixel_size: int = 64
    """Side of the square frames recorded with --obs pixels (a multiple of 8)."""
    workers: int = 1
    """Processes playing episodes in parallel (each with its own environment); the dataset does not
    depend on this number."""
    progress: bool = True
    """Show a progress bar (episodes, rate, ETA)."""


# ----- behaviour policies: reset(rng) at episode start, then __call__(obs, rng) -> action -----
def _is_discrete(space) -> bool:
    from gymnasium import spaces

    return isinstance(space, spaces.Discrete)


def _box_centre_scale(space) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-width of each action dimension; unbounded sides count as a unit scale."""
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    lo_ok, hi_ok = np.isfinite(low), np.isfinite(high)
    both = lo_ok & hi_ok
    low, high = np.where(lo_ok, low, 0.0), np.where(hi_ok, high, 0.0)  # no inf arithmetic below
    centre = np.where(both, (low + high) / 2, np.where(lo_ok, low + 1.0, np.where(hi_ok, high - 1.0, 0.0)))
    scale = np.where(both, (high - low) / 2, 1.0)
    return centre, scale


class Policy:
    """Base class: `reset(rng)` at the start of each episode, then `policy(obs, rng) -> action`."""

    name = "base"

    def __init__(self, space):
        from gymnasium import spaces

        if not isinstance(space, (spaces.Box, spaces.Discrete)):
            raise LoopWMError(f"policies act in Box or Discrete action spaces, not {space}")
        self.space = space

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def __call__(self, obs, rng: np.random.Generator):
        raise NotImplementedError

    def _to_box(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(x, self.space.low, self.space.high)
        if np.issubdtype(self.space.dtype, np.integer):
            x = np.rint(x)
        return x.astype(self.space.dtype)


class RandomPolicy(Policy):
    """Independent uniform samples of the action space (normal/exponential along unbounded sides)."""

    name = "random"

    def __call__(self, obs, rng):
        if _is_discrete(self.space):
            return int(self.space.start + rng.integers(self.space.n))
        low, high = np.asarray(self.space.low, np.float64), np.asarray(self.space.high, np.float64)
        lo_ok, hi_ok = np.isfinite(low), np.isfinite(high)
        shape = self.space.shape
        low, high = np.where(lo_ok, low, 0.0), np.where(hi_ok, high, 1.0)
        x = np.where(lo_ok & hi_ok, rng.uniform(low, high, size=shape),
                     np.where(lo_ok, low + rng.exponential(size=shape),
                              np.where(hi_ok, high - rng.exponential(size=shape), rng.normal(size=shape))))
        return self._to_box(x)


class SmoothPolicy(Policy):
    """Temporally correlated random actions: an Ornstein-Uhlenbeck-like process clipped to the box
    (x <- 0.9 x + sqrt(1 - 0.81) * 0.5 * noise, scaled to the box's half-width); for Discrete spaces,
    the last action is kept with probability 0.8."""

    name = "smooth"
    theta, sigma, keep = 0.9, 0.5, 0.8

    def reset(self, rng):
        self.x = None

    def __call__(self, obs, rng):
        if _is_discrete(self.space):
            if self.x is None or rng.random() >= self.keep:
                self.x = int(self.space.start + rng.integers(self.space.n))
            return self.x
        noise = self.sigma * rng.normal(size=self.space.shape)
        self.x = noise if self.x is None else self.theta * self.x + np.sqrt(1 - self.theta**2) * noise
        centre, scale = _box_centre_scale(self.space)
        return self._to_box(centre + scale * self.x)


class SeekPolicy(SmoothPolicy):
    """Scripted, for the built-in world ((N, 7) observations, 2D force): push the controlled body
    (feature 5 == 1) toward another body chosen at random, changing target every ~20 steps, with
    noise. The data then holds many collisions the agent caused. Elsewhere it acts like `smooth`."""

    name = "seek"
    noise = 0.3

    def reset(self, rng):
        super().reset(rng)
        self.target, self.until = None, 0

    def __call__(self, obs, rng):
        obs = np.asarray(obs)
        if (_is_discrete(self.space) or tuple(self.space.shape) != (2,) or obs.ndim != 2 or obs.shape[1] != 7
                or obs.shape[0] < 2):
            return super().__call__(obs, rng)
        controlled = np.flatnonzero(obs[:, 5] > 0.5)
        if len(controlled) == 0:
            return super().__call__(obs, rng)
        me = int(controlled[0])
        others = np.flatnonzero(np.arange(len(obs)) != me)
        if self.target is None or self.until <= 0 or self.target >= len(obs):
            self.target, self.until = int(rng.choice(others)), int(rng.integers(15, 26))
        self.until -= 1
        direction = obs[self.target, :2].astype(np.float64) - obs[me, :2]
        centre, scale = _box_centre_scale(self.space)
        push = direction / (np.linalg.norm(direction) + 1e-6) + self.noise * rng.normal(size=2)
        return self._to_box(centre + scale * push)


class MixedPolicy(Policy):
    """Each episode draws one of random, smooth and seek: broader coverage of the state space."""

    name = "mixed"

    def __init__(self, space):
        super().__init__(space)
        self.members = [RandomPolicy(space), SmoothPolicy(space), SeekPolicy(space)]
        self.current = self.members[0]

    def reset(self, rng):
        self.current = self.members[int(rng.integers(len(self.members)))]
        self.current.reset(rng)

    def __call__(self, obs, rng):
        return self.current(obs, rng)


POLICIES: dict[str, type[Policy]] = {"random": RandomPolicy, "smooth": SmoothPolicy, "seek": SeekPolicy,
                                     "mixed": MixedPolicy}
"""Behaviour policies by name."""


def make_policy(name: str, space) -> Policy:
    """The policy called `name` for action space `space`; LoopWMError for unknown names."""
    if name not in POLICIES:
        raise LoopWMError(f"unknown policy {name!r}: choose one of {', '.join(POLICIES)}")
    return POLICIES[name](space)


# ----- one episode -----
def episode_seeds(seed: int, episode: int) -> tuple[int, int]:
    """(environment reset seed, policy rng seed) of episode `episode`: a function of (seed, episode) only."""
    if seed < 0 or episode < 0:
        raise LoopWMError(f"seed and episode must be >= 0, got seed={seed}, episode={episode}")
    env_seed, policy_seed = np.random.SeedSequence([seed, episode]).generate_state(2)
    return int(env_seed), int(policy_seed)


def _info_dtype(value) -> str | None:
    """Stored dtype of a per-step info value, or None when it is not a numeric scalar."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int32"
    if isinstance(value, (float, np.floating)):
        return "float32"
    return None


def run_episode(env, policy, seed: int, episode: int, max_steps: int | None = None,
                info_dtypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Play one episode (its seeds depend only on (seed, episode)) and return its arrays.

    obs (T+1, *obs_shape) float32; action (T, ...) float32 (Box) or int64 (Discrete); reward float32;
    terminated, truncated bool; info_<key> for each key of `info_dtypes` (default: the numeric
    scalars in the first step's info). A key missing from a later step's info is stored as 0.
    Ends on terminated or truncated, or after `max_steps` steps (that last step is then marked truncated).
    """
    env_seed, policy_seed = episode_seeds(seed, episode)
    rng = np.random.default_rng(policy_seed)
    obs, _ = env.reset(seed=env_seed)
    policy.reset(rng)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    infos: dict[str, list] = {}
    while True:
        action = policy(obs, rng)
        obs, reward, terminated, truncated, info = env.step(action)
        if info_dtypes is None:  # the first step decides which info values are recorded
            info_dtypes = {k: d for k, v in info.items() if (d := _info_dtype(v)) is not None}
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terms.append(bool(terminated))
        truncs.append(bool(truncated))
        for key in info_dtypes:
            infos.setdefault(key, []).append(info.get(key, 0))
        if terminated or truncated:
            break
        if max_steps is not None and len(actions) >= max_steps:
            truncs[-1] = True
            break
    discrete = _is_discrete(env.action_space)
    obs_dtype = np.uint8 if env.observation_space.dtype == np.uint8 else np.float32  # frames stay bytes
    try:
        out = {"obs": np.asarray(np.stack([np.asarray(o) for o in observations]), dtype=obs_dtype)}
    except ValueError as err:
        raise LoopWMError(f"episode {episode}: the environment returned observations of varying shapes ({err}); "
                          "loopwm records fixed-shape Box observations") from err
    expected = tuple(env.observation_space.shape)
    if out["obs"].shape[1:] != expected:
        raise LoopWMError(f"episode {episode}: observations have shape {out['obs'].shape[1:]}, but the observation "
                          f"space says {expected}; fix the environment or wrap it so the two agree")
    bad = ~np.isfinite(out["obs"].reshape(len(out["obs"]), -1)).all(axis=1)
    if bad.any():
        raise LoopWMError(f"episode {episode}: the environment returned a non-finite (NaN or inf) observation at "
                          f"step {int(np.argmax(bad))}; fix the environment before collecting from it")
    out["action"] = np.asarray(actions, dtype=np.int64 if discrete else np.float32).reshape(
        len(actions), *(() if discrete else env.action_space.shape))
    out["reward"] = np.asarray(rewards, dtype=np.float32)
    out["terminated"] = np.asarray(terms, dtype=bool)
    out["truncated"] = np.asarray(truncs, dtype=bool)
    for key, dtype in info_dtypes.items():
        out[f"info_{key}"] = np.asarray(infos.get(key, []), dtype=dtype).reshape(len(actions))
    return out


# ----- collection -----
def _jsonable(x: Any, what: str) -> Any:
    """`x` with numpy scalars/arrays and tuples turned into JSON types; LoopWMError if impossible."""
    def conv(v):
        if isinstance(v, dict):
            return {str(k): conv(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(u) for u in v]
        if isinstance(v, np.ndarray):
            return conv(v.tolist())
        if isinstance(v, np.generic):
            return v.item()
        return v

    try:
        return json.loads(json.dumps(conv(x), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise LoopWMError(f"{what} must be JSON-serialisable to go in the dataset manifest ({err})") from err


def _parse_env_args(text: str) -> dict[str, Any]:
    """--env-args: a JSON object of keyword arguments ('' for none)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise LoopWMError(f"--env-args {text!r} is not valid JSON ({err.msg}); give an object such as "
                          "'{\"rail_radius\": 0.005}' (keys in double quotes)") from None
    if not isinstance(value, dict):
        raise LoopWMError(f"--env-args must be a JSON object of keyword arguments, e.g. '{{\"rail_radius\": 0.005}}', "
                          f"got {type(value).__name__}")
    return value


def _check_config(cfg: CollectConfig) -> None:
    for field in ("episodes", "shard_episodes"):
        if getattr(cfg, field) < 1:
            raise LoopWMError(f"--{field.replace('_', '-')} must be at least 1, got {getattr(cfg, field)}")
    for field in ("n_bodies", "max_episode_steps", "max_steps"):
        value = getattr(cfg, field)
        if value is not None and value < 1:
            raise LoopWMError(f"--{field.replace('_', '-')} must be at least 1 when given, got {value}")
    if cfg.seed < 0:
        raise LoopWMError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.workers < 1:
        raise LoopWMError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.obs not in ("state", "pixels"):
        raise LoopWMError(f"unknown --obs {cfg.obs!r}: use state or pixels")
    if cfg.policy not in POLICIES:
        raise LoopWMError(f"unknown policy {cfg.policy!r}: choose one of {', '.join(POLICIES)}")


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files a killed atomic write left behind (never the dataset's own files)."""
    for tmp in list(out.glob(".shard_*.npz.*.tmp")) + list(out.glob(f".{MANIFEST}.*.tmp")):
        try:
            tmp.unlink()
        except OSError:
            pass


CUSTOM_PREFIX = "python:"
"""env_id prefix recorded for an environment object handed to `collect(env=...)`."""


def _custom_env_id(env: Any) -> str:
    for attr in ("reset", "step", "observation_space", "action_space"):
        if not hasattr(env, attr):
            raise LoopWMError(f"collect(env=...) needs an object with the Gymnasium reset/step contract and "
                              f"observation_space/action_space attributes; {type(env).__name__} has no {attr}")
    spec = getattr(env, "spec", None)
    name = getattr(spec, "id", None) or f"{type(env).__module__}.{type(env).__qualname__}"
    return CUSTOM_PREFIX + name


_WORKER: dict[str, Any] = {}


def _worker_init(env_id: str, env_kwargs: dict, obs: str, pixel_size: int, policy: str) -> None:
    env = open_env(env_id, env_kwargs, obs, pixel_size)
    _WORKER.update(env=env, policy=make_policy(policy, env.action_space))


def _worker_episode(args) -> dict[str, np.ndarray]:
    seed, episode, max_steps, info_dtypes = args
    return run_episode(_WORKER["env"], _WORKER["policy"], seed, episode, max_steps, info_dtypes)


def _episodes(env, policy, cfg: "CollectConfig", start: int, kwargs: dict, own_env: bool, info_dtypes):
    """(episode index, arrays) for episodes start..cfg.episodes-1, in order. With --workers > 1 they
    are played in worker processes, each with its own copy of the environment; since episode e
    depends only on (seed, e), the dataset is the same whatever the number of workers."""
    e = start
    if cfg.workers <= 1 or not own_env:  # an environment object cannot be copied into other processes
        for e in range(start, cfg.episodes):
            yield e, run_episode(env, policy, cfg.seed, e, cfg.max_steps, info_dtypes())
        return
    if info_dtypes() is None and e < cfg.episodes:  # the first episode decides which info keys exist
        yield e, run_episode(env, policy, cfg.seed, e, cfg.max_steps, None)
        e += 1
    from loopwm.utils import worker_pool

    pool = worker_pool(cfg.workers, initializer=_worker_init, initargs=(cfg.env_id, kwargs, cfg.obs, cfg.pixel_size, cfg.policy))
    try:
        jobs = [(cfg.seed, i, cfg.max_steps, info_dtypes()) for i in range(e, cfg.episodes)]
        yield from zip(range(e, cfg.episodes), pool.map(_worker_episode, jobs, chunksize=4))
    finally:  # stopped early (an interrupt, an error): drop the queued episodes, keep no worker alive
        pool.shutdown(wait=True, cancel_futures=True)


def open_env(env_id: str, env_kwargs: dict[str, Any], obs: str = "state", pixel_size: int | None = 64):
    """The environment exactly as a dataset recorded it (`obs` and `pixel_size` from its manifest)."""
    from loopwm.envs import make_env  # lazily: data does not need the built-in world to load

    if obs == "pixels":
        from loopwm.envs.pixels import PixelObservation

        return PixelObservation(make_env(env_id, **env_kwargs, render_mode="rgb_array"), pixel_size or 64)
    return make_env(env_id, **env_kwargs)


def collect(cfg: CollectConfig | None = None, /, *, env: Any = None, env_kwargs: dict[str, Any] | None = None,
            **fields) -> Path:
    """Fill dataset folder `cfg.out` up to `cfg.episodes` episodes; returns the folder.

    Call as `collect(CollectConfig(...))` or `collect(env_id=..., out=..., episodes=...)` (keywords
    are CollectConfig fields, and override those of a given config). `env_kwargs` are extra keyword
    arguments for the environment, recorded in the manifest next to n_bodies/max_episode_steps.
    A folder that already holds a dataset is continued when its env, kwargs, policy and seed match.

    `env` is your own environment object instead of an id: anything with Gymnasium's
    `reset(seed=) -> (obs, info)` and `step(action) -> (obs, reward, terminated, truncated, info)`
    and Box/Discrete `observation_space`/`action_space`. Its episodes are capped at `max_steps`
    (1000 when unset). The dataset records it as "python:<class or spec id>"; evaluation then scores
    held-out episodes but cannot replay the real environment. The caller keeps ownership (not closed).
    """
    from tqdm.auto import tqdm

    try:
        cfg = dataclasses.replace(cfg, **fields) if cfg is not None else CollectConfig(**fields)
    except TypeError as err:
        names = ", ".join(f.name for f in dataclasses.fields(CollectConfig))
        raise LoopWMError(f"collect() got an unknown setting ({err}); the settings are {names}") from err
    if env is not None:
        cfg = dataclasses.replace(cfg, env_id=_custom_env_id(env), max_steps=cfg.max_steps or 1000)
    _check_config(cfg)
    kwargs = _jsonable({**_parse_env_args(cfg.env_args), **dict(env_kwargs or {})}, "env_kwargs")
    for field in ("n_bodies", "max_episode_steps"):  # given twice, they must agree: neither silently wins
        value = getattr(cfg, field)
        if value is None:
            continue
        if field in kwargs and kwargs[field] != value:
            raise LoopWMError(f"{field} is {kwargs[field]!r} in the environment arguments but --{field.replace('_', '-')} "
                              f"is {value}: give it in one place only")
        kwargs[field] = value
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise LoopWMError(f"--out {out} is a file; use a new --out (a folder)")
    identity = {"env_id": cfg.env_id, "env_kwargs": kwargs, "policy": cfg.policy, "seed": cfg.seed,
                "max_steps": cfg.max_steps, "obs": cfg.obs, "pixel_size": cfg.pixel_size if cfg.obs == "pixels" else None}
    manifest = read_manifest(out) if out.is_dir() else None  # checks format and schema version
    if manifest is not None:
        theirs = {k: manifest.get(k, {"obs": "state"}.get(k)) for k in identity}  # older manifests: state
        if theirs != identity:
            diff = {k: (theirs[k], identity[k]) for k in identity if theirs[k] != identity[k]}
            raise LoopWMError(f"{out} holds a dataset collected with other settings (existing vs now: {diff}); "
                              "use a new --out or delete it")
        for entry in manifest["shards"]:
            if not (out / entry["file"]).is_file():
                raise LoopWMError(f"{out} lists shard {entry['file']}, which is missing, so it cannot be continued; "
                                  "use a new --out or delete it")

    own_env = env is None
    if own_env:
        env = open_env(cfg.env_id, kwargs, cfg.obs, cfg.pixel_size)
    elif cfg.obs == "pixels":
        from loopwm.envs.pixels import PixelObservation

        env = PixelObservation(env, cfg.pixel_size)
    try:
        spaces = {"observation_space": describe_space(env.observation_space),
                  "action_space": describe_space(env.action_space)}
        if spaces["observation_space"]["type"] != "box":
            raise LoopWMError(f"{cfg.env_id} has a {spaces['observation_space']['type']} observation space; loopwm "
                              "records Box observations (wrap the environment to give arrays)")
        policy = make_policy(cfg.policy, env.action_space)
        if manifest is None:
            manifest = {
                "schema_version": SCHEMA_VERSION, "format": FORMAT, "created_by": f"loopwm {__version__}",
                **identity, **spaces,
                "kinematics": None if cfg.obs == "pixels" else  # frames carry no positions to integrate
                _jsonable(getattr(getattr(env, "unwrapped", env), "kinematics", None), "env.unwrapped.kinematics"),
                "info_keys": None, "info_dtypes": None, "shards": [],
            }
            out.mkdir(parents=True, exist_ok=True)
            write_manifest(out, manifest)  # claims the folder for these settings at once
        else:
            for key, desc in spaces.items():
                if manifest[key] != desc:
                    raise LoopWMError(f"{cfg.env_id}'s {key} is now {desc}, but {out} was collected with "
                                      f"{manifest[key]}; the environment changed: use a new --out")
            _remove_stale_temp_files(out)
        info_dtypes = manifest.get("info_dtypes") if manifest.get("info_keys") is not None else None
        done = sum(s["episodes"] for s in manifest["shards"])
        steps = sum(s["steps"] for s in manifest["shards"])
        bar = tqdm(total=cfg.episodes, initial=min(done, cfg.episodes), desc=f"collect {cfg.env_id}", unit="ep",
                   disable=not cfg.progress, dynamic_ncols=True)
        try:
            buffer: list[dict[str, np.ndarray]] = []
            for e, ep in _episodes(env, policy, cfg, done, kwargs, own_env, lambda: info_dtypes):
                if info_dtypes is None:  # the first episode fixes the info arrays of the whole dataset
                    info_dtypes = {k[5:]: str(v.dtype) for k, v in ep.items() if k.startswith("info_")}
                    manifest["info_keys"], manifest["info_dtypes"] = list(info_dtypes), info_dtypes
                buffer.append(ep)
                steps += len(ep["action"])
                bar.update(1)
                bar.set_postfix(steps=steps, refresh=False)
                if len(buffer) == cfg.shard_episodes or e == cfg.episodes - 1:
                    manifest["shards"].append(write_shard(out / shard_name(len(manifest["shards"])), buffer))
                    write_manifest(out, manifest)
                    buffer = []
        finally:
            bar.close()
        if manifest.get("stats", {}).get("episodes") != cfg.episodes:
            # normalisation statistics of the whole dataset, for users and tools; training
            # measures its own on the training episodes and stores them in the checkpoint
            ds = TrajectoryDataset.load(out, verify=False)
            stats = ds.stats(range(ds.episodes))
            manifest["stats"] = {"episodes": ds.episodes, **{k: [float(x) for x in np.ravel(v)] for k, v in stats.items()}}
            write_manifest(out, manifest)
    finally:
        if own_env:
            env.close()
    return out
