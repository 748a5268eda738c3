"""`loopwm plan`: closed-loop control in the real environment, planning with a world model.

Every decision: the planner draws candidate action sequences, the world (a trained model, or the
true simulator for the ceiling) scores them, the first action of the plan is taken in the real
environment, and the model reads the real observation that follows. `--model random` acts at
random (the floor). Prints one JSON object (with --json) or a short summary.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loopwm.utils import LoopWMError, atomic_write_json


@dataclass
class PlanConfig:
    """Act in the real environment by planning in imagination."""

    model: str = "oracle"
    """A run folder (plan with its world model), "oracle" (copies of the true simulator: the ceiling)
    or "random" (random actions: the floor)."""
    env_id: str = ""
    """Environment to act in; empty: the one the run was trained on (needed for oracle and random)."""
    n_bodies: int = 0
    """Bodies in a built-in world (0: the run's, or the world's default)."""
    episodes: int = 5
    """Episodes of closed-loop control."""
    max_episode_steps: int = 200
    """Steps per episode."""
    planner: str = "mppi"
    """mppi or cem."""
    horizon: int = 15
    """Imagined steps per candidate sequence."""
    candidates: int = 256
    """Candidate action sequences per planner iteration (the batch every imagined step runs at)."""
    iterations: int = 3
    """Planner iterations per decision."""
    temperature: float = 0.1
    """MPPI temperature, as a fraction of the spread of one draw's returns."""
    elites: float = 0.1
    """CEM: fraction of candidates refitted to."""
    discount: float = 0.99
    """Discount of imagined rewards."""
    value: str = ""
    """Folder of a terminal value fitted with `loopwm value` (empty: none): each candidate also earns
    discount^horizon * V(its last observation), so a short horizon sees what follows it."""
    reward: str = ""
    """Reward of imagined steps: empty for the model's reward head; "known" for the task's own
    reward function of the observations (loopwm.plan.rewards: Pendulum-v1, Reacher-v5,
    loopwm/Push-v0); or
    "package.module:function", your own, called as fn(obs, action, next_obs) on batches -> (K,)."""
    decoding: str = "per-step"
    """How candidates are imagined: "per-step" (each predicted observation encoded again) or
    "deferred" (rolled in latent space, as a model trained with --objective dd expects)."""
    depth: int = 0
    """Loop iterations per imagined step (0: the run's recorded exit rule and depth, else its
    evaluation depth)."""
    context: int = 0
    """Real observations the model's state is read from before each decision, the latest included
    (0: the run's training --context, as it was trained to read them)."""
    exit: str = "auto"
    """Exit rule for imagined steps: auto (the run's recorded one), fixed, delta, accel, token-delta, gate."""
    threshold: float = 0.0
    """Threshold of the exit rule (with --exit auto: the recorded one)."""
    seed: int = 0
    """Seed of the episodes (episode i resets with seed + i) and of the planner."""
    out: str = ""
    """Folder for plan.json and a GIF of the first episode (empty: write nothing)."""
    json: bool = False
    """Print the result as one JSON object."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""


def _open(cfg: PlanConfig, meta: dict | None, render: bool):
    from loopwm.envs import make_env

    kwargs = dict((meta or {}).get("env_kwargs") or {})
    kwargs.pop("max_episode_steps", None)
    env_id = cfg.env_id or (meta or {}).get("env_id")
    if not env_id:
        raise LoopWMError("--env-id is needed with --model oracle or random (there is no run to take it from)")
    if meta is not None and cfg.env_id and meta.get("env_id") and cfg.env_id != meta["env_id"]:
        raise LoopWMError(f"the run was trained on {meta['env_id']}, not {cfg.env_id}: leave --env-id empty or "
                          "plan with a run trained on that environment")
    if cfg.n_bodies:
        kwargs["n_bodies"] = cfg.n_bodies
    if render:
        kwargs["render_mode"] = "rgb_array"
    return make_env(env_id, max_episode_steps=cfg.max_episode_steps, **kwargs), env_id, kwargs


def run_plan(cfg: PlanConfig) -> dict:
    import torch

    from loopwm.eval.openloop import exit_rule_from, latent_decoding
    from loopwm.plan.planners import make_planner
    from loopwm.plan.rewards import resolve_reward
    from loopwm.plan.worlds import LearnedWorld, OracleWorld
    from loopwm.utils import pick_device

    if cfg.episodes < 1 or cfg.max_episode_steps < 1:
        raise LoopWMError("--episodes and --max-episode-steps must be at least 1")
    deferred = latent_decoding(cfg.decoding)
    device = pick_device(cfg.device)
    meta, model, rule, depth, value, context = None, None, None, None, None, None
    if cfg.value:
        from loopwm.plan.value import load_value, value_warning

        value, value_meta = load_value(cfg.value, device)
        caution = value_warning(value_meta)
        if caution:
            warnings.warn(caution, stacklevel=2)
        if abs(float(value_meta["config"]["discount"]) - cfg.discount) > 1e-9:
            raise LoopWMError(f"the value was fitted with discount {value_meta['config']['discount']} but planning uses "
                              f"{cfg.discount}: pass --discount {value_meta['config']['discount']} or fit it again")
    if cfg.reward and cfg.model in ("oracle", "random"):
        raise LoopWMError(f"--reward scores a learned model's imagined observations; --model {cfg.model} does not "
                          "imagine (leave --reward empty)")
    if cfg.model not in ("oracle", "random"):
        from loopwm.checkpoint import load_model
        from loopwm.eval.evaluate import resolve_exit, training_context

        model, meta = load_model(cfg.model, device)
        if meta.get("obs", "state") == "pixels" or getattr(model.spec, "pixels", False):
            raise LoopWMError("planning from frames is not supported yet: plan with a run trained on state vectors")
        name, threshold, depth = resolve_exit(cfg.model, cfg.exit, cfg.threshold, cfg.depth)
        depth = depth or None
        rule = exit_rule_from(name, threshold, model)
        context = cfg.context or training_context(cfg.model)
    returns, frames = [], []
    decisions, decide_seconds = 0, 0.0
    world = None
    for episode in range(cfg.episodes):
        env, env_id, kwargs = _open(cfg, meta, render=bool(cfg.out) and episode == 0)
        if value is not None and value_meta.get("env_id") != env_id:
            raise LoopWMError(f"the value at {cfg.value} was fitted on {value_meta.get('env_id')}, not {env_id}: "
                              "fit one on data of this environment (`loopwm value --data ...`)")
        obs, _ = env.reset(seed=cfg.seed + episode)
        env.action_space.seed(cfg.seed + episode)
        if cfg.model == "oracle":
            world = world or OracleWorld(env, cfg.discount, scratch_factory=lambda: _open(cfg, meta, False)[0], value=value)
            world.env = env  # every episode acts in a freshly made environment
        elif model is not None and world is None:
            world = LearnedWorld(model, depth, rule, cfg.discount, deferred=deferred, value=value,
                                 reward_fn=resolve_reward(cfg.reward, env_id), context=context)
        planner = None
        if world is not None:
            extra = {"temperature": cfg.temperature} if cfg.planner == "mppi" else {"elites": cfg.elites}
            planner = make_planner(cfg.planner, env.action_space, horizon=cfg.horizon, candidates=cfg.candidates,
                                   iterations=cfg.iterations, seed=cfg.seed + episode, **extra)
            world.reset(obs)
        total, done = 0.0, False
        while not done:
            if episode == 0 and cfg.out:
                frames.append(env.render())
            t0 = time.perf_counter()
            action = env.action_space.sample() if planner is None else planner.act(world.score)
            decide_seconds += time.perf_counter() - t0
            decisions += 1
            next_obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if world is not None:
                world.observe(action, next_obs)
            done = terminated or truncated
        env.close()
        returns.append(total)
    imagined = world.imagined_steps if world is not None else 0
    result = {
        "model": cfg.model, "env_id": env_id, "env_kwargs": {k: v for k, v in kwargs.items() if k != "render_mode"},
        "planner": cfg.planner if cfg.model != "random" else "random",
        "episodes": cfg.episodes, "returns": returns,
        "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
        "decisions": decisions, "decisions_per_second": decisions / max(decide_seconds, 1e-9),
        "model_steps_per_second": imagined / max(world.seconds, 1e-9) if world is not None and imagined else None,
        "iterations_per_step": (world.iterations / imagined) if model is not None and imagined else None,
        "horizon": cfg.horizon, "candidates": cfg.candidates, "planner_iterations": cfg.iterations,
        "exit_rule": getattr(rule, "name", None) if model is not None else None, "depth": depth,
        "context": context if model is not None else None,
        "decoding": cfg.decoding if model is not None else None, "value": cfg.value or None,
        "reward": (cfg.reward or "head") if model is not None else None,
        "threads": torch.get_num_threads(), "device": str(device),
    }
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "plan.json", {**result, "config": asdict(cfg)})
        if frames and frames[0] is not None:
            result["video"] = str(write_gif(frames, out / "episode.gif"))
    return result


def write_gif(frames: list, path: Path, fps: int = 20) -> Path:
    import imageio.v2 as imageio

    tmp = path.with_name("." + path.name + ".tmp")
    imageio.mimsave(tmp, [np.asarray(f, dtype=np.uint8) for f in frames], format="GIF", duration=1.0 / fps, loop=0)
    tmp.replace(path)  # atomic: a killed run never leaves half a GIF
    return path


def format_result(result: dict) -> str:
    ips = result["iterations_per_step"]
    mps = result["model_steps_per_second"]
    return (f"{result['model']} on {result['env_id']} ({result['planner']}): return {result['return_mean']:.2f} "
            f"± {result['return_std']:.2f} over {result['episodes']} episodes; {result['decisions_per_second']:.1f} "
            f"decisions/s" + (f", {mps:,.0f} imagined steps/s" if mps else "")
            + (f", {ips:.2f} loop iterations per imagined step" if ips else ""))
