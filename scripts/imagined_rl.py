"""Train a policy inside the learned world, score it in the real one: stable-baselines3 PPO in
`loopwm.ImaginedEnv` against the same PPO trained in the real environment for as many steps.

    loopwm collect --env-id CartPole-v1 --episodes 500 --out data/cartpole
    loopwm train --data data/cartpole --out results/imagined-rl/runs/cartpole --minutes 6
    pip install "loopwm[rl]"
    python scripts/imagined_rl.py --run results/imagined-rl/runs/cartpole --out results/imagined-rl   # ~15 min

Both policies use PPO with the same settings and seed; each is scored on the real environment
(deterministic actions, `eval_episodes` episodes from seeds the training never used), next to
random actions. The imagined environment starts from real first observations of the run's data
and ends an episode where the continuation head says it ends. Writes OUT/results.json.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tyro

from loopwm.utils import atomic_write_json


@dataclass
class ImaginedRLConfig:
    """PPO in imagination against PPO in the real environment."""

    run: str = "results/imagined-rl/runs/cartpole"
    """A trained run (its environment is the real one)."""
    out: str = "results/imagined-rl"
    """Folder for results.json."""
    timesteps: list[int] = field(default_factory=lambda: [2_048, 8_192, 32_768])
    """Environment steps of PPO training at which both policies are scored (one run per world,
    scored as it passes each count)."""
    max_episode_steps: int = 500
    """Episode cap in both worlds."""
    eval_episodes: int = 20
    """Real-environment episodes per scored policy."""
    seed: int = 0


def score(env, act, episodes: int, seed: int) -> list[float]:
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def main(cfg: ImaginedRLConfig) -> dict:
    import torch
    from stable_baselines3 import PPO

    from loopwm import ImaginedEnv
    from loopwm.checkpoint import load_model
    from loopwm.envs import make_env

    torch.set_num_threads(1)
    _, meta = load_model(cfg.run)
    env_id = meta["env_id"]
    real = lambda: make_env(env_id, max_episode_steps=cfg.max_episode_steps)  # noqa: E731
    worlds = {"imagined": lambda: ImaginedEnv(cfg.run, max_episode_steps=cfg.max_episode_steps, device="cpu"),
              "real": real}
    rows = {}
    eval_env = real()
    eval_env.action_space.seed(cfg.seed)
    rows["random"] = {"returns": score(eval_env, lambda o: eval_env.action_space.sample(), cfg.eval_episodes, 10_000)}
    for name, make in worlds.items():
        env = make()
        policy = PPO("MlpPolicy", env, seed=cfg.seed, verbose=0, device="cpu")
        done, seconds = 0, 0.0
        for steps in sorted(cfg.timesteps):
            start = time.perf_counter()
            policy.learn(total_timesteps=steps - done, reset_num_timesteps=done == 0)
            seconds += time.perf_counter() - start
            done = steps
            returns = score(eval_env, lambda o: policy.predict(o, deterministic=True)[0], cfg.eval_episodes, 10_000)
            rows[f"ppo in the {name} world, {steps} steps"] = {
                "world": name, "timesteps": steps, "returns": returns, "train_seconds": seconds,
                "train_steps_per_second": steps / seconds}
            print(name, steps, np.mean(returns), f"{seconds:.0f} s", flush=True)
    for row in rows.values():
        row["return_mean"], row["return_std"] = float(np.mean(row["returns"])), float(np.std(row["returns"]))
    result = {"env_id": env_id, "run": cfg.run, "run_train_steps": meta.get("step"), "rows": rows, "config": asdict(cfg)}
    atomic_write_json(Path(cfg.out) / "results.json", result)
    return result


if __name__ == "__main__":
    main(tyro.cli(ImaginedRLConfig))
