"""Planning with learned world models against the true simulator and random actions.

For each task: collect episodes, train every model family on them (equal wall-clock minutes, one
thread each, two at a time), then run closed-loop MPPI in the real environment with each model,
with a copy of the true simulator (the ceiling) and with random actions (the floor), all with the
same planner settings and seeds. Reports returns, the return normalised between random (0) and
the true-simulator planner (1), decisions per second and imagined steps per second.

    python scripts/plan_bench.py --out results/plan                     # about 40 minutes on 2 cores
    python scripts/plan_bench.py --out /tmp/plan --quick                # about 2 minutes

Writes OUT/results.jsonl (one row per task and planner world) and OUT/summary.md. Re-running
re-uses finished runs and rows.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import tyro

from loopwm.utils import atomic_write_text


@dataclass
class PlanBenchConfig:
    """Closed-loop planning returns of learned models between random actions and the true simulator."""

    out: str = "results/plan"
    """Result folder (data and runs go under it, ignored by git)."""
    tasks: list[str] = field(default_factory=lambda: ["Pendulum-v1"])
    """Environments to act in (Gymnasium ids or built-in loopwm ids)."""
    episodes: int = 200
    """Episodes collected per task for training."""
    minutes: float = 8.0
    """Training minutes per model."""
    models: list[str] = field(default_factory=lambda: ["looped", "deep-2", "rssm"])
    """Model families: looped, deep-K (K distinct blocks; deep-2 matches the looped model's 2
    iterations), rssm, gru."""
    plan_episodes: int = 5
    """Closed-loop episodes per planner world."""
    max_episode_steps: int = 200
    """Steps per closed-loop episode."""
    horizon: int = 15
    """Planner horizon."""
    candidates: int = 128
    """Candidate sequences per planner iteration."""
    iterations: int = 2
    """Planner iterations per decision."""
    quick: bool = False
    """A few-minute version for checking the script."""


def model_config(name: str):
    from loopwm.models.rssm import RSSMConfig
    from loopwm.models.world_model import ModelConfig

    if name == "looped":
        return ModelConfig(kind="looped", mu_rec=2.0), RSSMConfig()
    if name.startswith("deep-"):
        return ModelConfig(kind="deep", n_deep=int(name.split("-")[1])), RSSMConfig()
    if name == "rssm":
        return ModelConfig(kind="rssm"), RSSMConfig()
    if name == "gru":
        return ModelConfig(kind="rssm"), RSSMConfig(stoch=0)
    raise SystemExit(f"unknown model {name!r}: looped, deep-K, rssm or gru")


def _train(job: dict) -> str:
    import torch

    from loopwm.train.loop import TrainConfig, train

    torch.set_num_threads(1)
    model, rssm = model_config(job["name"])
    train(TrainConfig(data=job["data"], out=job["run"], model=model, rssm=rssm, minutes=job["minutes"], steps=10**9,
                      threads=1, progress=False, eval_every=10**9, ckpt_every=500))
    return job["run"]


def main(cfg: PlanBenchConfig) -> None:
    import numpy as np

    from loopwm.data import collect
    from loopwm.plan.control import PlanConfig, run_plan

    if cfg.quick:
        cfg = replace(cfg, episodes=20, minutes=0.3, plan_episodes=1, max_episode_steps=30, horizon=6, candidates=16,
                      iterations=1, models=cfg.models[:2])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "results.jsonl"
    rows = [json.loads(x) for x in rows_path.read_text().splitlines() if x.strip()] if rows_path.exists() else []
    done = {(r["task"], r["world"]) for r in rows}
    for task in cfg.tasks:
        short = task.split("/")[-1].split("-")[0].lower()
        data = collect(env_id=task, out=str(out / "data" / short), episodes=cfg.episodes, progress=False,
                       max_episode_steps=cfg.max_episode_steps)
        jobs = [{"name": m, "data": str(data), "run": str(out / "runs" / short / m), "minutes": cfg.minutes}
                for m in cfg.models if (task, m) not in done]
        with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_train, jobs))
        plan = dict(env_id=task, episodes=cfg.plan_episodes, max_episode_steps=cfg.max_episode_steps, horizon=cfg.horizon,
                    candidates=cfg.candidates, iterations=cfg.iterations, seed=1000)
        for world in ["random", "oracle", *cfg.models]:
            if (task, world) in done:
                continue
            model = world if world in ("random", "oracle") else str(out / "runs" / short / world)
            res = run_plan(PlanConfig(model=model, **{**plan, "env_id": task if world in ("random", "oracle") else ""}))
            rows.append({"task": task, "world": world, **{k: v for k, v in res.items() if k != "env_kwargs"}})
            atomic_write_text(rows_path, "".join(json.dumps(r) + "\n" for r in rows))
            print(f"{task} {world}: return {res['return_mean']:.1f} ± {res['return_std']:.1f}, "
                  f"{res['decisions_per_second']:.1f} decisions/s", flush=True)
    write_summary(out, rows, cfg)


def write_summary(out: Path, rows: list[dict], cfg: PlanBenchConfig) -> None:
    lines = [f"# Planning in imagination: MPPI, horizon {cfg.horizon}, {cfg.candidates} candidates x {cfg.iterations} "
             f"iterations per decision, {cfg.plan_episodes} episodes of {cfg.max_episode_steps} steps; models trained "
             f"{cfg.minutes:g} minutes each on {cfg.episodes} random-policy episodes", "",
             "| task | planning with | return | normalised (random 0, true simulator 1) | decisions/s | imagined steps/s | "
             "loop iterations per step |", "|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        sel = {r["world"]: r for r in rows if r["task"] == task}
        lo, hi = sel.get("random", {}).get("return_mean"), sel.get("oracle", {}).get("return_mean")
        for world, r in sel.items():
            norm = (r["return_mean"] - lo) / (hi - lo) if lo is not None and hi is not None and hi != lo else None
            mps, ips = r.get("model_steps_per_second"), r.get("iterations_per_step")
            lines.append(f"| {task} | {world} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | "
                         f"{'' if norm is None else f'{norm:.2f}'} | {r['decisions_per_second']:.1f} | "
                         f"{'' if not mps else f'{mps:,.0f}'} | {'' if not ips else f'{ips:.2f}'} |")
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(PlanBenchConfig))
