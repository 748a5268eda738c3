"""Collect episodes from an environment into a dataset folder, with progress bars and resume.

Episode e is generated from seeds derived from (seed, e) alone, so collecting 100 episodes, stopping,
and collecting again up to 200 gives exactly the data of one uninterrupted 200-episode run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from loopwm import __version__
from loopwm.data.shards import FORMAT, SCHEMA_VERSION, describe_space, read_manifest, write_manifest, write_shard
from loopwm.utils import LoopWMError


@dataclass
class CollectConfig:
    """Record episodes from an environment into a dataset folder (re-running continues it)."""

    env_id: str = "loopwm/Balls-v0"
    """Gymnasium id: a built-in world (loopwm/Balls-v0, Cradle-v0, Chain-v0, Mixed-v0) or any registered id."""
    out: str = "data/balls"
    """Dataset folder to create or continue."""
    episodes: int = 200
    """Total episodes the folder should hold."""
    policy: str = "mixed"
    """Behaviour policy: random, smooth, seek or mixed (a random one of the others per episode)."""
    seed: int = 0
    """Seed of the whole collection; episode e depends only on (seed, e)."""
    shard_episodes: int = 50
    """Episodes per shard file."""
    n_bodies: int | None = None
    """Bodies in a built-in world (passed to the environment when set)."""
    max_episode_steps: int | None = None
    """Episode length cap (passed to the environment when set)."""
    progress: bool = True
    """Show a progress bar."""


# ----- behaviour policies: reset(rng) at episode start, then __call__(obs, rng) -> action -----
class RandomPolicy:
    name = "random"

    def __init__(self, space):
        self.space = space

    def reset(self, rng):
        pass

    def __call__(self, obs, rng):
        if hasattr(self.space, "n"):
            return int(rng.integers(self.space.n))
        return rng.uniform(self.space.low, self.space.high).astype(self.space.dtype)


class SmoothPolicy(RandomPolicy):
    """Temporally correlated random actions (an Ornstein-Uhlenbeck-like process), clipped to the box."""

    name = "smooth"

    def reset(self, rng):
        self.x = None

    def __call__(self, obs, rng):
        if hasattr(self.space, "n"):
            if self.x is None or rng.random() > 0.8:
                self.x = int(rng.integers(self.space.n))
            return self.x
        noise = rng.normal(size=self.space.shape)
        self.x = noise if self.x is None else 0.8 * self.x + 0.6 * noise
        return np.clip(self.x, self.space.low, self.space.high).astype(self.space.dtype)


class SeekPolicy(SmoothPolicy):
    """Scripted, for the built-in world: push the controlled body toward another body, so that the
    data holds many collisions the agent caused. Falls back to smooth noise on other worlds."""

    name = "seek"

    def reset(self, rng):
        super().reset(rng)
        self.target, self.until = None, 0

    def __call__(self, obs, rng):
        obs = np.asarray(obs)
        if obs.ndim != 2 or obs.shape[1] != 7 or self.space.shape != (2,):
            return super().__call__(obs, rng)
        controlled = np.flatnonzero(obs[:, 5] > 0.5)
        others = np.flatnonzero(obs[:, 5] <= 0.5)
        if len(controlled) == 0 or len(others) == 0:
            return super().__call__(obs, rng)
        me = obs[controlled[0], :2]
        if self.target is None or self.until <= 0:
            self.target, self.until = int(rng.choice(others)), int(rng.integers(10, 30))
        self.until -= 1
        direction = obs[self.target, :2] - me
        push = direction / (np.linalg.norm(direction) + 1e-6) + 0.3 * rng.normal(size=2)
        return np.clip(push, self.space.low, self.space.high).astype(self.space.dtype)


POLICIES = {"random": RandomPolicy, "smooth": SmoothPolicy, "seek": SeekPolicy}


class MixedPolicy:
    """Each episode draws one of the other policies: broader coverage of the state space."""

    name = "mixed"

    def __init__(self, space):
        self.members = [cls(space) for cls in POLICIES.values()]

    def reset(self, rng):
        self.current = self.members[int(rng.integers(len(self.members)))]
        self.current.reset(rng)

    def __call__(self, obs, rng):
        return self.current(obs, rng)


def make_policy(name: str, space):
    table = {**POLICIES, "mixed": MixedPolicy}
    if name not in table:
        raise LoopWMError(f"unknown policy {name!r}: choose one of {', '.join(table)}")
    return table[name](space)


# ----- collection -----
def run_episode(env, policy, seed: int, episode: int, max_steps: int | None = None) -> dict[str, np.ndarray]:
    """Play one episode; its seeds depend only on (seed, episode)."""
    env_seed, policy_seed = np.random.SeedSequence([seed, episode]).generate_state(2)
    rng = np.random.default_rng(int(policy_seed))
    obs, _ = env.reset(seed=int(env_seed))
    policy.reset(rng)
    observations, steps, infos = [obs], {k: [] for k in ("action", "reward", "terminated", "truncated")}, {}
    t = 0
    while True:
        action = policy(obs, rng)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        for key, value in (("action", action), ("reward", reward), ("terminated", terminated), ("truncated", truncated)):
            steps[key].append(value)
        for key, value in info.items():
            if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
                infos.setdefault(key, []).append(value)
        t += 1
        if terminated or truncated or (max_steps is not None and t >= max_steps):
            break
    episode_arrays = {
        "obs": np.asarray(observations, dtype=np.float32),
        "action": np.asarray(steps["action"], dtype=np.int64 if hasattr(env.action_space, "n") else np.float32),
        "reward": np.asarray(steps["reward"], dtype=np.float32),
        "terminated": np.asarray(steps["terminated"], dtype=bool),
        "truncated": np.asarray(steps["truncated"], dtype=bool),
    }
    for key, values in infos.items():
        if len(values) == t:  # only keys reported on every step
            arr = np.asarray(values)
            episode_arrays[f"info_{key}"] = arr.astype(np.int32 if arr.dtype.kind in "iub" else np.float32)
    return episode_arrays


def collect(cfg: CollectConfig) -> Path:
    """Fill `cfg.out` up to `cfg.episodes` episodes; returns the dataset folder."""
    from loopwm.envs import make_env  # lazily: data does not need the built-in world to load

    if cfg.episodes < 1 or cfg.shard_episodes < 1:
        raise LoopWMError("--episodes and --shard-episodes must be at least 1")
    env_kwargs = {}
    if cfg.n_bodies is not None:
        env_kwargs["n_bodies"] = cfg.n_bodies
    if cfg.max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = cfg.max_episode_steps
    out = Path(cfg.out)
    env = make_env(cfg.env_id, **env_kwargs)
    try:
        policy = make_policy(cfg.policy, env.action_space)
        identity = {"env_id": cfg.env_id, "env_kwargs": env_kwargs, "policy": cfg.policy, "seed": cfg.seed}
        manifest = read_manifest(out)
        if manifest is not None:
            if manifest.get("format") != FORMAT:
                raise LoopWMError(f"{out} holds something that is not a loopwm dataset: use a new --out")
            mine = {k: manifest.get(k) for k in identity}
            if mine != identity:
                raise LoopWMError(f"{out} holds a dataset collected with other settings ({mine}); use a new --out or delete it")
        else:
            manifest = {
                "format": FORMAT, "schema_version": SCHEMA_VERSION, "created_by": f"loopwm {__version__}", **identity,
                "observation_space": describe_space(env.observation_space),
                "action_space": describe_space(env.action_space),
                "kinematics": getattr(env.unwrapped, "kinematics", None),
                "shards": [],
            }
        done = sum(s["episodes"] for s in manifest["shards"])
        bar = tqdm(total=cfg.episodes, initial=min(done, cfg.episodes), desc=f"collect {cfg.env_id}", unit="ep",
                   disable=not cfg.progress, dynamic_ncols=True)
        buffer = []
        for e in range(done, cfg.episodes):
            buffer.append(run_episode(env, policy, cfg.seed, e))
            bar.update(1)
            if len(buffer) == cfg.shard_episodes or e == cfg.episodes - 1:
                shard = out / f"shard_{len(manifest['shards']):05d}.npz"
                manifest["shards"].append(write_shard(shard, buffer))
                write_manifest(out, manifest)
                buffer = []
        bar.close()
        if done >= cfg.episodes and not (out / "manifest.json").exists():
            write_manifest(out, manifest)
    finally:
        env.close()
    return out
