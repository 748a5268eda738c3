"""Planning with learned world models against the true simulator and random actions.

For each task: collect episodes, train every model family on them (equal wall-clock minutes, one
thread each, two at a time), then run closed-loop MPPI in the real environment with each model,
with a copy of the true simulator (the ceiling) and with random actions (the floor), all with the
same planner settings and seeds. Reports returns, the return normalised between random (0) and
the true-simulator planner (1), decisions per second and imagined steps per second, and how far
each model's validation loss was still falling when its training budget ran out.

Besides one row per model family, the looped model is also planned with (its `variants`):
    looped@D        fixed depth D (the loop's largest depth in these rows)
    looped@D+delta:T  the same largest depth with the delta exit rule at threshold T: the compute an
                    adaptive exit saves
    looped-dd       a looped model trained with deferred decoding (--objective dd), candidates
                    scored per step (re-encoding every predicted observation) ...
    looped-dd+dd    ... and in latent space (deferred decoding, the cheap path DD trains for)
    WORLD+value     any of these, or oracle, with a terminal value fitted on the task's data
                    (`loopwm value`; the same value for every model)
    WORLD/hH        any of these with planner horizon H instead of --horizon (e.g. looped/h5+value)
    MODEL+reward    a learned model scored with the task's known reward function of its imagined
                    observations instead of its reward head (`loopwm plan --reward known`): what
                    its dynamics alone are worth to the planner

    python scripts/plan_bench.py --out results/plan                     # about 70 minutes on 2 cores
    python scripts/plan_bench.py --out /tmp/plan --quick                # about 3 minutes

Writes OUT/results.jsonl (one row per task and planner world), OUT/training.json and OUT/summary.md.
Re-running re-uses finished runs and rows.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import tyro

from loopwm.utils import atomic_write_json, atomic_write_text, worker_pool


@dataclass
class PlanBenchConfig:
    """Closed-loop planning returns of learned models between random actions and the true simulator."""

    out: str = "results/plan"
    """Result folder (data and runs go under it, ignored by git)."""
    tasks: list[str] = field(default_factory=lambda: ["Pendulum-v1", "loopwm/Push-v0", "Reacher-v5"])
    """Environments to act in (Gymnasium ids or built-in loopwm ids)."""
    episodes: int = 200
    """Episodes collected per task for training (the collector's mixed behaviour policy)."""
    minutes: float = 6.0
    """Training minutes per model."""
    models: list[str] = field(default_factory=lambda: ["looped", "deep-2", "rssm", "looped-dd"])
    """Model families: looped, looped-ids (bodies told apart by place, --model.slot-ids 16; deep-K-ids
    likewise), looped-dd
    (deferred-decoding objective), deep-K (K distinct blocks; deep-2 matches the looped model's 2
    iterations), rssm, rssm-dreamer-cell (DreamerV3's LayerNorm
    GRU and a learned initial state), gru; any of them with -rwW trains with weight W on the reward
    loss in the environment's raw units (e.g. looped-rw0.1, the setting before 2026-12-03), with -rsW
    with weight W in standard units (--reward-units standard; -rs1 is the default)."""
    variants: list[str] = field(default_factory=lambda: ["looped@6", "looped@6+delta:0.05", "looped@6+delta:0.2",
                                                         "looped-dd+dd"])
    """Extra planner worlds: RUN@DEPTH (fixed depth), RUN@DEPTH+RULE:THRESHOLD (an exit rule, at
    most DEPTH iterations; for delta the threshold is the relative latent change per iteration),
    RUN+dd (deferred decoding), WORLD+value (a terminal value fitted on the task's data; WORLD may
    be oracle), WORLD/hH (planner horizon H), MODEL+reward (the task's known reward function instead of
    the reward head)."""
    plan_episodes: int = 3
    """Closed-loop episodes per planner world."""
    max_episode_steps: int = 200
    """Steps per episode, in the collected data and in closed-loop control."""
    horizon: int = 15
    """Planner horizon."""
    candidates: int = 64
    """Candidate sequences per planner iteration."""
    iterations: int = 2
    """Planner iterations per decision."""
    workers: int = 2
    """Processes (one thread each) that train models and run planners side by side."""
    replan: bool = False
    """Plan every task and world of this invocation again, replacing the rows an earlier run left in
    --out (its trained models are still reused); without it a re-run fills in only what is missing,
    which resumes a killed run but keeps results measured with older code."""
    quick: bool = False
    """A few-minute version for checking the script."""


def split_reward_weight(name: str) -> tuple[str, float | None, str]:
    """"looped-rw1" -> ("looped", 1.0, "raw"); "looped-rs1" -> ("looped", 1.0, "standard") (the reward
    loss in units of the rewards' standard deviation); a name without a suffix -> (name, None, "raw")."""
    for suffix, units in (("-rw", "raw"), ("-rs", "standard")):
        base, sep, weight = name.rpartition(suffix)
        if sep and base:
            try:
                return base, float(weight), units
            except ValueError:
                pass
    return name, None, "raw"


def model_config(name: str):
    from loopwm.models.rssm import RSSMConfig
    from loopwm.models.world_model import ModelConfig

    name = split_reward_weight(name)[0]

    if name == "looped-ids":  # bodies told apart by their place in the observation
        return ModelConfig(kind="looped", mu_rec=2.0, slot_ids=16), RSSMConfig()
    if name.startswith("deep-") and name.endswith("-ids"):  # the stack with the same slot ids
        return ModelConfig(kind="deep", n_deep=int(name.split("-")[1]), slot_ids=16), RSSMConfig()
    if name in ("looped", "looped-dd"):
        return ModelConfig(kind="looped", mu_rec=2.0), RSSMConfig()
    if name.startswith("deep-"):
        return ModelConfig(kind="deep", n_deep=int(name.split("-")[1])), RSSMConfig()
    if name == "rssm":
        return ModelConfig(kind="rssm"), RSSMConfig()
    if name == "rssm-dreamer-cell":
        return ModelConfig(kind="rssm"), RSSMConfig(gru="layernorm", learned_init=True)
    if name == "gru":
        return ModelConfig(kind="rssm"), RSSMConfig(stoch=0)
    raise SystemExit(f"unknown model {name!r}: looped, looped-ids, looped-dd, deep-K, deep-K-ids, rssm, rssm-dreamer-cell or gru")


def parse_world(world: str) -> tuple[str, dict]:
    """A planner world's name -> (the model it plans with, PlanConfig settings; "value": True asks for
    the task's fitted terminal value)."""
    name, settings = world, {}
    if "+value" in name:
        name, settings["value"] = name.replace("+value", ""), True
    if "+reward" in name:
        name, settings["reward"] = name.replace("+reward", ""), "known"
    if "/h" in name:
        name, horizon = name.rsplit("/h", 1)
        settings["horizon"] = int(horizon)
    if name in ("random", "oracle"):
        return name, settings
    if name.endswith("+dd"):
        name, settings["decoding"] = name[: -len("+dd")], "deferred"
    if "@" in name:
        name, spec = name.split("@", 1)
        depth, _, rule = spec.partition("+")
        rule, _, threshold = rule.partition(":")
        settings["depth"] = int(depth)
        settings["exit"] = rule or "fixed"
        if threshold:
            settings["threshold"] = float(threshold)
    return name, settings


def _train(job: dict) -> dict:
    import torch

    from loopwm.train.loop import TrainConfig, train

    torch.set_num_threads(1)
    model, rssm = model_config(job["name"])
    base, reward_weight, reward_units = split_reward_weight(job["name"])
    extra = {"objective": "dd", "dd_interval": 100, "horizon": job["horizon"]} if base == "looped-dd" else {}
    if reward_weight is not None:
        extra["reward_weight"], extra["reward_units"] = reward_weight, reward_units
    train(TrainConfig(data=job["data"], out=job["run"], model=model, rssm=rssm, minutes=job["minutes"], steps=10**9,
                      threads=1, progress=False, eval_every=100, ckpt_every=500, **extra))
    return job


def _plan(job: dict) -> dict:
    import torch

    from loopwm.plan.control import PlanConfig, run_plan

    torch.set_num_threads(1)
    res = run_plan(PlanConfig(**job["plan"]))
    return {"task": job["task"], "world": job["world"], **{k: v for k, v in res.items() if k != "env_kwargs"}}


def training_summary(run: Path) -> dict:
    """Steps, minutes and the validation curve's last fifth, from the run's own files."""
    from loopwm.train.schedule import plateaued

    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curve = [(r["step"], r["val/obs"]) for r in records if "val/obs" in r]
    last = records[-1] if records else {}
    return {"steps": int(last.get("step", 0)), "minutes": round(float(last.get("time", 0.0)) / 60, 2),
            "val_obs": curve[-1][1] if curve else None, "best_val_obs": min(v for _, v in curve) if curve else None,
            "still_improving": not plateaued(curve, 0.02) if curve else None}


def main(cfg: PlanBenchConfig) -> None:
    from loopwm.data import collect

    if cfg.quick:
        cfg = replace(cfg, episodes=20, minutes=0.3, plan_episodes=1, max_episode_steps=30, horizon=6, candidates=16,
                      iterations=1, tasks=cfg.tasks[:2], models=["looped", "looped-dd"],
                      variants=["looped@3+delta:0.1", "looped-dd+dd"])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "results.jsonl"
    rows = [json.loads(x) for x in rows_path.read_text().splitlines() if x.strip()] if rows_path.exists() else []
    rows = kept_rows(rows, cfg)
    done = {(r["task"], r["world"]) for r in rows}
    runs = {}
    for task in cfg.tasks:
        short = task.split("/")[-1].split("-")[0].lower()
        data = collect(env_id=task, out=str(out / "data" / short), episodes=cfg.episodes, progress=False,
                       max_episode_steps=cfg.max_episode_steps)
        runs[task] = {m: out / "runs" / short / m for m in cfg.models}
        jobs = [{"name": m, "data": str(data), "run": str(run), "minutes": cfg.minutes, "horizon": cfg.horizon}
                for m, run in runs[task].items()]  # a finished run resumes and stops at once
        with worker_pool(cfg.workers) as pool:
            for job in pool.map(_train, jobs):
                print(f"{task} {job['name']}: trained", flush=True)
    # models trained by an earlier run in this folder keep their entries, as their result rows are kept
    training = json.loads((out / "training.json").read_text()) if (out / "training.json").exists() else {}
    for task, r in runs.items():
        training.setdefault(task, {}).update({m: training_summary(run) for m, run in r.items()})
    atomic_write_json(out / "training.json", training)
    values = {}
    if any(parse_world(w)[1].get("value") for w in cfg.variants):
        from loopwm.plan.value import ValueConfig, fit_value

        for task in cfg.tasks:  # one value per task, from the data every model trained on
            short = task.split("/")[-1].split("-")[0].lower()
            folder = out / "runs" / short / "value"
            if not (folder / "value.json").exists():
                fit_value(ValueConfig(data=str(out / "data" / short), out=str(folder)))
            values[task] = str(folder)
            fit = json.loads((folder / "value.json").read_text())
            training[task]["value"] = {"seconds": fit["seconds"], **(fit["metrics"]["val"] or fit["metrics"]["train"])}
        atomic_write_json(out / "training.json", training)

    jobs = []
    for task in cfg.tasks:
        plan = dict(episodes=cfg.plan_episodes, max_episode_steps=cfg.max_episode_steps, horizon=cfg.horizon,
                    candidates=cfg.candidates, iterations=cfg.iterations, seed=1000)
        for world in ["random", "oracle", *cfg.models, *cfg.variants]:
            if (task, world) in done:
                continue
            model, settings = parse_world(world)
            if settings.pop("value", False):
                settings["value"] = values[task]
            if model not in ("random", "oracle"):
                if model not in runs[task]:
                    raise SystemExit(f"variant {world!r} plans with {model!r}, which is not in --models")
                model = str(runs[task][model])
            jobs.append({"task": task, "world": world, "plan": {
                **plan, **settings, "model": model, "env_id": task if model in ("random", "oracle") else ""}})
    with worker_pool(cfg.workers) as pool:
        for row in pool.map(_plan, jobs):
            rows.append(row)
            atomic_write_text(rows_path, "".join(json.dumps(r) + "\n" for r in rows))
            print(f"{row['task']} {row['world']}: return {row['return_mean']:.1f} ± {row['return_std']:.1f}, "
                  f"{row['decisions_per_second']:.1f} decisions/s", flush=True)
    write_summary(out, rows, training, cfg)


def kept_rows(rows: list[dict], cfg: PlanBenchConfig) -> list[dict]:
    """The result rows of an earlier run that this one keeps: all of them, or with --replan only
    those of tasks and worlds this invocation does not plan."""
    if not cfg.replan:
        return rows
    mine = {(t, w) for t in cfg.tasks for w in ["random", "oracle", *cfg.models, *cfg.variants]}
    return [r for r in rows if (r["task"], r["world"]) not in mine]


def write_summary(out: Path, rows: list[dict], training: dict, cfg: PlanBenchConfig) -> None:
    # every command that added rows to this folder, so a merged report still says how to reproduce it
    command = "python scripts/plan_bench.py " + " ".join(sys.argv[1:] or ["--out", str(out)])
    commands_path = out / "commands.json"
    commands = json.loads(commands_path.read_text()) if commands_path.exists() else []
    if command not in commands:
        commands.append(command)
        atomic_write_json(commands_path, commands)
    lines = [f"# Planning in imagination: MPPI, horizon {cfg.horizon}, {cfg.candidates} candidates x {cfg.iterations} "
             f"iterations per decision, {cfg.plan_episodes} episodes of {cfg.max_episode_steps} steps; models trained "
             f"{cfg.minutes:g} minutes each (one thread) on {cfg.episodes} episodes of the mixed behaviour policy", "",
             "Produced by " + " then ".join(f"`{c}`" for c in commands) + ". Normalised return: random 0, "
             f"MPPI on the true simulator 1. Decisions per second: one thread per planner, {cfg.workers} planner(s) "
             "at a time in this run (rows kept from an earlier run keep the rates measured then; the machine may have "
             "had other jobs).", "",
             "| task | planning with | return | normalised | decisions/s | imagined steps/s | loop iterations per step |",
             "|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        sel = {r["world"]: r for r in rows if r["task"] == task}
        lo, hi = sel.get("random", {}).get("return_mean"), sel.get("oracle", {}).get("return_mean")
        for world, r in sel.items():
            norm = (r["return_mean"] - lo) / (hi - lo) if lo is not None and hi is not None and hi != lo else None
            mps, ips = r.get("model_steps_per_second"), r.get("iterations_per_step")
            lines.append(f"| {task} | {world} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | "
                         f"{'' if norm is None else f'{norm:.2f}'} | {r['decisions_per_second']:.1f} | "
                         f"{'' if not mps else f'{mps:,.0f}'} | {'' if not ips else f'{ips:.2f}'} |")
    lines += ["", "## Training", "", "| task | model | steps | minutes | validation loss (last / best) | "
              "still improving (last fifth > 2% better) |", "|---|---|---|---|---|---|"]
    for task, models in training.items():
        for m, t in models.items():
            if m == "value":
                continue
            val = "" if t["val_obs"] is None else f"{t['val_obs']:.4f} / {t['best_val_obs']:.4f}"
            lines.append(f"| {task} | {m} | {t['steps']:,} | {t['minutes']:.1f} | {val} | "
                         f"{'' if t['still_improving'] is None else ('yes' if t['still_improving'] else 'no')} |")
    fitted = {task: m["value"] for task, m in training.items() if "value" in m}
    if fitted:
        lines += ["", "## Terminal values (`loopwm value`, fitted lambda-returns of the data's own policy)", "",
                  "| task | fit seconds | held-out explained variance | held-out rank correlation |", "|---|---|---|---|"]
        for task, v in fitted.items():
            ev, rho = v.get("explained_variance"), v.get("spearman")
            lines.append(f"| {task} | {v['seconds']:.0f} | {'' if ev is None else f'{ev:.2f}'} | "
                         f"{'' if rho is None else f'{rho:.2f}'} |")
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(PlanBenchConfig))
