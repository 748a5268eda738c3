"""`loopwm bench`: train a suite of world models on the same data and score them the same way.

Every model (the looped model, deep transformers of growing depth, the RSSM) is trained by the same
loop on the same episodes, once per budget currency: an equal number of gradient steps, and an equal
wall-clock time. Each is scored by the same open-loop code on the same held-out windows, and timed
side by side in this one process. Output, under --out:

    results.jsonl     one row per model, world, seed, budget and horizon
    table.md          the horizon-1/10/50 errors, parameters, FLOPs and speeds
    *.png             error vs horizon, parameter efficiency, error vs test-time iterations, compute
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from loopwm.checkpoint import load_model
from loopwm.data import CollectConfig, TrajectoryDataset, collect
from loopwm.eval.openloop import open_loop
from loopwm.models.flops import count_step_flops
from loopwm.models.world_model import ModelConfig
from loopwm.train.loop import TrainConfig, train
from loopwm.utils import LoopWMError, atomic_write_text, pick_device

WORLD_IDS = {"balls": "loopwm/Balls-v0", "cradle": "loopwm/Cradle-v0", "chain": "loopwm/Chain-v0", "mixed": "loopwm/Mixed-v0"}


def model_suite(quick: bool) -> dict[str, ModelConfig]:
    """The looped model and the fixed-depth family it is measured against (same width and heads)."""
    looped = ModelConfig(kind="looped", mu_rec=4.0)
    suite = {"looped": looped}
    depths = (1, 4, 8) if quick else (1, 2, 4, 8, 16)
    for n in depths:
        suite[f"deep-{n}"] = ModelConfig(kind="deep", n_deep=n)
    if not quick:
        suite["deep-4-wide"] = ModelConfig(kind="deep", n_deep=4, d=128)
    suite["rssm"] = ModelConfig(kind="rssm")
    return suite


@dataclass
class BenchConfig:
    """Train and score the looped model against fixed-depth transformers and floors."""

    out: str = "results/bench"
    """Folder for results.jsonl, table.md and the plots (runs go to OUT/runs)."""
    worlds: tuple[str, ...] = ("balls", "cradle", "chain")
    """Built-in regimes to benchmark."""
    n_bodies: int = 5
    """Bodies per world."""
    episodes: int = 300
    """Episodes collected per world."""
    seeds: int = 3
    """Training seeds per model (the spread is reported)."""
    steps: int = 1500
    """Gradient steps per model in the equal-steps currency."""
    minutes: float = 3.0
    """Training minutes per model in the equal-wall-clock currency."""
    budgets: tuple[str, ...] = ("steps", "wallclock")
    """Currencies to match models in."""
    lr: float = 2e-3
    """Learning rate for every model (the tuning sweep is --lrs)."""
    lrs: tuple[float, ...] = ()
    """Learning rates to try per model family on the first world and seed; the best is kept."""
    horizon: int = 50
    """Longest open-loop horizon scored."""
    test_depths: tuple[int, ...] = (1, 2, 4, 8, 12, 16)
    """Test-time iteration counts for the iterative-depth curve of the looped model."""
    quick: bool = False
    """Reduced suite (one world, one seed, short budgets) that finishes in minutes."""
    device: str = "auto"
    """"auto", "cpu" or "cuda[:N]"."""
    progress: bool = True
    """Show progress bars."""


def resolve(cfg: BenchConfig) -> BenchConfig:
    if cfg.quick:
        cfg = replace(cfg, worlds=cfg.worlds[:1], seeds=1, steps=min(cfg.steps, 120), minutes=min(cfg.minutes, 0.4),
                      episodes=min(cfg.episodes, 60), test_depths=(1, 2, 4, 8))
    unknown = [w for w in cfg.worlds if w not in WORLD_IDS]
    if unknown:
        raise LoopWMError(f"unknown world(s) {unknown}: choose from {', '.join(WORLD_IDS)}")
    return cfg


@torch.no_grad()
def speed(model, obs0: torch.Tensor, action: torch.Tensor, batch: int, seconds: float = 1.0) -> float:
    """Imagined environment steps per second at a batch size (each sample's step counts once)."""
    obs = obs0[None].expand(batch, *obs0.shape).contiguous()
    act = action[None].expand(batch, *action.shape).contiguous()
    state = model.initial(obs)
    for _ in range(3):
        state, _ = model.step(state, act)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        state, _ = model.step(state, act)
        n += 1
    return n * batch / (time.perf_counter() - start)


def run_bench(cfg: BenchConfig) -> Path:
    cfg = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    suite = model_suite(cfg.quick)
    rows: list[dict] = []
    depth_rows: list[dict] = []
    jobs = [(w, s, name, b) for w in cfg.worlds for s in range(cfg.seeds) for name in suite for b in cfg.budgets]
    bar = tqdm(total=len(jobs), desc="bench", unit="model", disable=not cfg.progress, dynamic_ncols=True)
    timed: dict[tuple[str, str], tuple] = {}
    best_lr = tune_learning_rates(cfg, suite, out, device) if cfg.lrs else {name: cfg.lr for name in suite}
    for world in cfg.worlds:
        data, ds = world_data(cfg, world, out)
        for seed in range(cfg.seeds):
            for name, mcfg in suite.items():
                for budget in cfg.budgets:
                    run_dir = out / "runs" / world / name / f"seed{seed}" / budget
                    tcfg = TrainConfig(data=str(data), out=str(run_dir), model=mcfg, lr=best_lr[name], seed=seed,
                                       steps=cfg.steps if budget == "steps" else 10**9,
                                       minutes=0.0 if budget == "steps" else cfg.minutes,
                                       eval_every=10**9, ckpt_every=500, progress=False, device=cfg.device)
                    train(tcfg)
                    model, meta = load_model(run_dir, device)
                    val = np.asarray(meta["val_episodes"])
                    res = open_loop(model, ds, val, 4, cfg.horizon, 256, device=device)
                    first = ds.episode(int(val[0]))
                    obs0 = model._as_entities(torch.as_tensor(first["obs"][0], device=device).float())
                    act0 = torch.as_tensor(first["action"][0], device=device)
                    if (world, name) not in timed:  # timings once per model and world, all in this process
                        timed[(world, name)] = (count_step_flops(model, obs0, act0), speed(model, obs0, act0, 1),
                                                speed(model, obs0, act0, 256))
                    flops, sps1, sps256 = timed[(world, name)]
                    for h in range(1, cfg.horizon + 1):
                        rows.append({"model": name, "world": world, "seed": seed, "horizon": h, "budget": budget, "lr": best_lr[name],
                                     "error": float(res.errors[h - 1]), "params": model.param_count(),
                                     "flops_per_step": flops, "iterations": float(res.iterations.mean()),
                                     "steps_per_s_b1": sps1, "steps_per_s_b256": sps256, "train_steps": meta["step"],
                                     **{f"floor_{k}": float(v[h - 1]) for k, v in res.floors.items()}})
                    if name == "looped" and budget == cfg.budgets[0]:
                        for depth in cfg.test_depths:
                            r = open_loop(model, ds, val, 4, 10, 256, depth=depth, device=device)
                            depth_rows.append({"world": world, "seed": seed, "depth": depth, "error_h10": float(r.errors[9]),
                                               "flops_per_step": count_step_flops(model, obs0, act0, depth)})
                    bar.update(1)
    bar.close()
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / "depth.jsonl", "".join(json.dumps(r) + "\n" for r in depth_rows))
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    table = markdown_table(rows)
    atomic_write_text(out / "table.md", table)
    from loopwm.eval.bench_plots import plot_all

    plot_all(rows, depth_rows, out)
    print(table)
    return out


def world_data(cfg: BenchConfig, world: str, out: Path) -> tuple[Path, TrajectoryDataset]:
    """The one dataset every model of a world trains on (collected once, reused on re-runs)."""
    data = collect(CollectConfig(env_id=WORLD_IDS[world], out=str(out / "data" / world), episodes=cfg.episodes,
                                 n_bodies=cfg.n_bodies, seed=0, progress=False))
    return data, TrajectoryDataset.load(data)


def tune_learning_rates(cfg: BenchConfig, suite: dict[str, ModelConfig], out: Path, device) -> dict[str, float]:
    """Equal tuning budget per model: each learning rate in --lrs, trained for --steps on the first
    world with seed 0; the one with the lowest horizon-10 validation error is kept."""
    world = cfg.worlds[0]
    data, ds = world_data(cfg, world, out)
    best: dict[str, float] = {}
    for name, mcfg in suite.items():
        scores = {}
        for lr in cfg.lrs:
            run_dir = out / "runs" / "tuning" / world / name / f"lr{lr:g}"
            train(TrainConfig(data=str(data), out=str(run_dir), model=mcfg, lr=lr, seed=0, steps=cfg.steps,
                              eval_every=10**9, ckpt_every=500, progress=False, device=cfg.device))
            model, meta = load_model(run_dir, device)
            scores[lr] = float(open_loop(model, ds, np.asarray(meta["val_episodes"]), 4, 10, 256, device=device).errors[9])
        best[name] = min(scores, key=scores.get)
    atomic_write_text(out / "tuning.json", json.dumps(best, indent=2) + "\n")
    return best


def markdown_table(rows: list[dict]) -> str:
    """Mean (and spread over seeds) of the error at horizons 1, 10, 50 per world, budget and model."""
    keys = sorted({(r["world"], r["budget"], r["model"]) for r in rows}, key=lambda k: (k[0], k[1], _order(k[2])))
    hs = [h for h in (1, 10, 50) if any(r["horizon"] == h for r in rows)]
    head = "| world | budget | model | params | FLOPs/step | iters | " + " | ".join(f"h{h}" for h in hs) + \
           " | steps/s b1 | steps/s b256 | train steps |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for world, budget, model in keys:
        sel = [r for r in rows if (r["world"], r["budget"], r["model"]) == (world, budget, model)]
        cells = []
        for h in hs:
            errs = np.array([r["error"] for r in sel if r["horizon"] == h])
            cells.append(f"{errs.mean():.4f}" + (f" ± {errs.std():.4f}" if len(errs) > 1 else ""))
        r0 = sel[0]
        steps = np.mean([r["train_steps"] for r in sel if r["horizon"] == 1])
        lines.append(f"| {world} | {budget} | {model} | {r0['params']:,} | {r0['flops_per_step']:,} | {r0['iterations']:.1f} | "
                     + " | ".join(cells) + f" | {r0['steps_per_s_b1']:.0f} | {r0['steps_per_s_b256']:.0f} | {steps:.0f} |")
    for world in sorted({r["world"] for r in rows}):
        sel = [r for r in rows if r["world"] == world]
        for name in sorted(k[6:] for k in rows[0] if k.startswith("floor_")):
            cells = [f"{np.mean([r['floor_' + name] for r in sel if r['horizon'] == h]):.4f}" for h in hs]
            lines.append(f"| {world} | - | floor: {name} | 0 | 0 | - | " + " | ".join(cells) + " | - | - | - |")
    return "\n".join(lines) + "\n"


def _order(name: str) -> tuple:
    if name == "looped":
        return (0, 0)
    if name.startswith("deep-"):
        parts = name.split("-")
        return (1, int(parts[1]), len(parts))
    return (2, name)
