"""How much planning does Pendulum swing-up need? MPPI budgets (candidates x horizon x iterations,
and the looped model's depth) against return and decisions per second, on the runs of
scripts/plan_bench.py.

    python scripts/plan_bench.py --out results/plan --minutes 6 --plan-episodes 3      # the runs, once
    python scripts/plan_budget.py --runs results/plan/runs/pendulum --out results/plan-budget   # ~25 minutes

Each budget is one `loopwm plan --json` run (3 episodes, seed 1000, as plan_bench), one process on
one torch thread; returns are normalised between random actions (0) and MPPI on the true simulator
at plan_bench's full budget (1), read from plan_bench's results. Re-running skips budgets already
in OUT/results.jsonl; OUT/summary.md is rewritten from all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from loopwm.utils import atomic_write_text


@dataclass
class PlanBudgetConfig:
    """Return and decision rate of MPPI at several planning budgets."""

    runs: str = "results/plan/runs/pendulum"
    """Folder of trained runs (looped, deep-2, rssm) from scripts/plan_bench.py."""
    reference: str = "results/plan/results.jsonl"
    """plan_bench's results: the random and true-simulator returns that normalise."""
    out: str = "results/plan-budget"
    """Folder for results.jsonl and summary.md."""
    env_id: str = "Pendulum-v1"
    episodes: int = 3
    budgets: list[str] = field(default_factory=lambda: [
        "looped 64 10 1 0", "looped 32 10 1 0", "looped 128 10 1 0", "looped 32 6 1 0", "oracle 64 10 1 0",
        "oracle 32 6 1 0", "looped 64 15 1 0", "looped 32 15 1 0", "looped 16 15 1 0", "looped 8 15 1 0",
        "looped 64 15 1 1", "looped 32 15 1 1", "looped 16 15 1 1", "looped 8 15 1 1", "oracle 64 15 1 0",
        "oracle 16 15 1 0", "deep-2 64 15 1 0", "deep-2 32 15 1 0", "deep-2 16 15 1 0", "rssm 64 15 1 0",
        "rssm 32 15 1 0", "rssm 16 15 1 0"])
    """"WORLD CANDIDATES HORIZON ITERATIONS DEPTH" (depth 0: the run's evaluation depth)."""


def _key(row: dict) -> tuple:
    return (row["world"], row["candidates"], row["horizon"], row["planner_iterations"], row.get("depth") or 0)


def main(cfg: PlanBudgetConfig) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    done = {_key(r) for r in rows}
    for budget in cfg.budgets:
        world, k, h, it, depth = budget.split()
        if (world, int(k), int(h), int(it), int(depth)) in done:
            continue
        model = world if world in ("oracle", "random") else str(Path(cfg.runs) / world)
        proc = subprocess.run([sys.executable, "-m", "loopwm.cli", "plan", "--model", model, "--env-id", cfg.env_id,
                               "--episodes", str(cfg.episodes), "--max-episode-steps", "200", "--candidates", k,
                               "--horizon", h, "--iterations", it, "--depth", depth, "--exit", "fixed",
                               "--seed", "1000", "--json", "--device", "cpu"], capture_output=True, text=True,
                              check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows.append({"world": world, **json.loads(proc.stdout)})
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(budget, rows[-1]["return_mean"], rows[-1]["decisions_per_second"], flush=True)
    ref = {r["world"]: r["return_mean"] for r in map(json.loads, Path(cfg.reference).read_text().splitlines())}
    lo, hi = ref["random"], ref["oracle"]
    lines = [f"# MPPI budgets on {cfg.env_id}: {cfg.episodes} episodes each, seed 1000, one torch thread",
             "", f"Normalised: random actions {lo:.1f} -> 0, true simulator at 128 x 15 x 2 {hi:.1f} -> 1.", "",
             "| planning with | candidates | horizon | iterations | model depth | return | normalised | decisions/s | imagined steps/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["world"], -r["horizon"], -r["candidates"], r.get("depth") or 0)):
        steps = f"{r['model_steps_per_second']:,.0f}" if r.get("model_steps_per_second") else ""
        lines.append(f"| {r['world']} | {r['candidates']} | {r['horizon']} | {r['planner_iterations']} | "
                     f"{r.get('depth') or ('eval' if r['world'] not in ('oracle', 'random') else '')} | "
                     f"{r['return_mean']:.1f} ± {r['return_std']:.1f} | {(r['return_mean'] - lo) / (hi - lo):.2f} | "
                     f"{r['decisions_per_second']:.1f} | {steps} |")
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return out / "summary.md"


if __name__ == "__main__":
    print(main(tyro.cli(PlanBudgetConfig)))
