"""One shared block across different physics: does it stretch thin?

The built-in world's `mixed` regime draws rigid balls, a Newton's cradle or a deformable chain at
every reset. This study trains one looped model on `mixed` (the generalist) against one looped
model per regime, each trained only on its own (the specialists), and a deep transformer of about
the generalist's size (deep-1) on `mixed`. Every model trains until its validation error stops
improving (or a cap), then each is scored on the held-out episodes of every regime. The generalist
sees the union of the specialists' data (3x their episodes, collected with other seeds, so no
held-out episode is ever trained on), and errors are measured in the specialist's units for every
model of a regime (`open_loop(..., reference=specialist)`), so one table compares them directly.

    python scripts/physics_study.py --out results/physics                # about 45 minutes on 2 cores
    python scripts/physics_study.py --out /tmp/physics --quick           # about 2 minutes

Writes under --out: runs.jsonl (training summary per model), results.jsonl (h1 and h10 per model,
regime and depth, with the copy-last floor), summary.md. Re-running re-uses finished runs and scores.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tyro

from loopwm.utils import atomic_write_text, worker_pool

REGIMES = {"balls": "loopwm/Balls-v0", "cradle": "loopwm/Cradle-v0", "chain": "loopwm/Chain-v0"}


@dataclass
class PhysicsStudyConfig:
    """A looped generalist on mixed physics against looped specialists and a deep model."""

    out: str = "results/physics"
    """Result folder (data and runs go under it, ignored by git)."""
    n_bodies: int = 5
    """Bodies in every world (the benchmark's default)."""
    episodes: int = 300
    """Episodes per specialist regime; the generalist's mixed data has 3x as many."""
    steps: int = 6000
    """Gradient-step cap per model."""
    generalist_steps: int = 0
    """Gradient-step cap of the two models trained on mixed (0: --steps). Three times --steps gives
    each the three specialists' training together: as many steps per regime as one specialist had."""
    until_plateau: float = 0.02
    """Stop when validation error improved by less than this fraction over the last fifth (0: train the cap)."""
    batch_size: int = 32
    """Training windows per step."""
    lr: float = 3e-3
    """Peak learning rate, every model."""
    context: int = 2
    """Observed steps per training window."""
    horizon: int = 4
    """Imagined steps per training window."""
    test_depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Test-time iterations for looped models (each is reported at its best, by h1, per regime)."""
    seed: int = 0
    """Seed of training (the data seeds are fixed: specialists 0, generalist 1000)."""
    workers: int = 2
    """Training processes (one thread each)."""
    quick: bool = False
    """A minutes-long version for checking the script."""


def jobs_for(cfg: PhysicsStudyConfig, data: dict[str, str], out: Path) -> list[dict]:
    from depth_study import train_job  # the depth study's training job, run by its _train
    from loopwm.models.world_model import ModelConfig

    looped = ModelConfig(kind="looped", mu_rec=4.0)
    models = {**{f"looped-{r}": ("looped", r) for r in REGIMES}, "looped-mixed": ("looped", "mixed"),
              "deep-1-mixed": ("deep-1", "mixed")}
    return [train_job(name, looped if kind == "looped" else ModelConfig(kind="deep", n_deep=1), data[world],
                      str(out / "runs" / name), steps=(cfg.generalist_steps or cfg.steps) if world == "mixed" else cfg.steps,
                      batch_size=cfg.batch_size, lr=cfg.lr, context=cfg.context, horizon=cfg.horizon, seed=cfg.seed,
                      until_plateau=cfg.until_plateau) for name, (kind, world) in models.items()]


def main(cfg: PhysicsStudyConfig) -> None:
    import torch

    from depth_study import _read, _train, _write  # the depth study's training job and result files
    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset, collect
    from loopwm.eval.openloop import open_loop
    from loopwm.utils import pick_device

    if cfg.quick:
        cfg = replace(cfg, episodes=12, steps=30, until_plateau=0.0, test_depths=[1, 4],
                      generalist_steps=min(cfg.generalist_steps, 90))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.json", json.dumps(asdict(cfg), indent=1))
    data = {r: str(collect(env_id=env, n_bodies=cfg.n_bodies, out=str(out / "data" / r), episodes=cfg.episodes,
                           seed=0, progress=False)) for r, env in REGIMES.items()}
    data["mixed"] = str(collect(env_id="loopwm/Mixed-v0", n_bodies=cfg.n_bodies, out=str(out / "data" / "mixed"),
                                episodes=3 * cfg.episodes, seed=1000, progress=False))

    runs_path = out / "runs.jsonl"
    runs = {r["model"]: r for r in _read(runs_path)}
    jobs = [j for j in jobs_for(cfg, data, out) if runs.get(j["name"], {}).get("cap") != j["steps"]]
    with worker_pool(cfg.workers) as pool:
        for row in pool.map(_train, jobs):
            runs[row["model"]] = row
            _write(runs_path, list(runs.values()))
            print(f"trained {row['model']}: {row['steps']} steps in {row['train_seconds'] / 60:.1f} min", flush=True)

    torch.set_num_threads(2)
    device = pick_device("auto")
    results_path = out / "results.jsonl"
    results = _read(results_path)
    scored = {(r["model"], r["regime"]) for r in results}
    for regime in REGIMES:
        ds = TrajectoryDataset.load(data[regime])
        reference, meta = load_model(out / "runs" / f"looped-{regime}", device)
        episodes = np.asarray(meta["val_episodes"])  # the specialist's held-out episodes: nobody trained on them
        for name in runs:
            if (name, regime) in scored or not (name == "looped-mixed" or name == "deep-1-mixed"
                                                or name == f"looped-{regime}"):
                continue
            model, _ = load_model(out / "runs" / name, device)
            depths = cfg.test_depths if model.cfg.kind == "looped" else [None]
            for depth in depths:
                res = open_loop(model, ds, episodes, cfg.context, 10, 512, depth=depth, device=device, reference=reference)
                results.append({"model": name, "regime": regime, "depth": depth or model.cfg.n_deep,
                                "params": model.param_count(), "h1": float(res.errors[0]), "h10": float(res.errors[9]),
                                "copy_last_h1": float(res.floors["copy_last"][0]),
                                "copy_last_h10": float(res.floors["copy_last"][9])})
            _write(results_path, results)
            print(f"scored {name} on {regime}", flush=True)
    write_summary(out, cfg)


def write_summary(out: Path, cfg: PhysicsStudyConfig) -> None:
    from depth_study import _read

    runs = {r["model"]: r for r in _read(out / "runs.jsonl")}
    results = _read(out / "results.jsonl")

    def best(name: str, regime: str) -> dict | None:
        rows = [r for r in results if r["model"] == name and r["regime"] == regime]
        return min(rows, key=lambda r: r["h1"]) if rows else None

    mixed = f"; the two on mixed {cfg.generalist_steps}" if cfg.generalist_steps not in (0, cfg.steps) else ""
    budget = (f"trained until validation stops improving by {cfg.until_plateau:.0%} over the last fifth (at most "
              f"{cfg.steps} steps{mixed})" if cfg.until_plateau > 0 else
              f"{'every model' if not mixed else 'the specialists'} trained {cfg.steps} steps{mixed}")
    lines = [f"# One shared block across physics: {cfg.n_bodies} bodies, {budget}, batch {cfg.batch_size}, lr {cfg.lr}",
             "", "Produced by `python scripts/physics_study.py " + " ".join(sys.argv[1:] or ["--out", str(out)]) + "`. "
             "Errors on each regime's held-out episodes, in that regime's specialist's units (per-feature training "
             "std), looped models at their best test depth by h1; in brackets the ratio to the specialist.", "",
             "| regime | copy-last h1 / h10 | specialist (looped) h1 / h10 | generalist (looped, mixed) h1 / h10 | "
             "deep-1 on mixed h1 / h10 |", "|---|---|---|---|---|"]
    for regime in REGIMES:
        spec, gen, deep = best(f"looped-{regime}", regime), best("looped-mixed", regime), best("deep-1-mixed", regime)
        if spec is None:
            continue

        def cell(r):
            if r is None:
                return ""
            depth = f" (depth {r['depth']})" if r["model"].startswith("looped") else ""
            return (f"{r['h1']:.4f} / {r['h10']:.4f}{depth} [{r['h1'] / spec['h1']:.2f}x / "
                    f"{r['h10'] / spec['h10']:.2f}x]")
        lines.append(f"| {regime} | {spec['copy_last_h1']:.4f} / {spec['copy_last_h10']:.4f} | "
                     f"{spec['h1']:.4f} / {spec['h10']:.4f} (depth {spec['depth']}) | {cell(gen)} | {cell(deep)} |")
    lines += ["", "## Training", "", "| model | params | steps | minutes | stopped | last validation losses |",
              "|---|---|---|---|---|---|"]
    params = {r["model"]: r["params"] for r in results}
    for name, r in runs.items():
        last = ", ".join(f"{v:.4f}" for _, v in r["val_curve"][-2:])
        lines.append(f"| {name} | {params.get(name, 0):,} | {r['steps']} | {r['train_seconds'] / 60:.1f} | "
                     f"{r['stop_reason']} | {last} |")
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(PhysicsStudyConfig))
