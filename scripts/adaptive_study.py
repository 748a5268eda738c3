"""Adaptive depth, measured: train a looped model with an exit gate on a world whose difficulty
varies, then write where its iterations go and what they buy.

    python scripts/adaptive_study.py --out results/adaptive            # about 17 minutes on 2 cores
    python scripts/adaptive_study.py --out /tmp/adaptive --quick       # about 2.5 minutes

Writes under --out: depth_by_difficulty.jsonl, exit_sweep.jsonl, iterations_by_difficulty.jsonl,
wallclock.json, summary.md, accuracy_vs_compute.png, depth_by_difficulty.png,
iterations_vs_difficulty.png and rollout_iterations.gif (the real world, the imagined one, and the
iterations each step used). Re-running with the same --out re-uses the data and the trained run
(its time budget is spent) and only measures again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

from loopwm.checkpoint import load_model
from loopwm.data import TrajectoryDataset, collect
from loopwm.eval.adaptive import depth_by_difficulty, exit_sweep, one_step_errors, wallclock
from loopwm.eval.evaluate import frame_renderer
from loopwm.eval.openloop import exit_rule_from, real_vs_imagined, spearman
from loopwm.eval.plots import _plt, save_side_by_side_gif
from loopwm.models.world_model import ModelConfig
from loopwm.train.loop import TrainConfig, train
from loopwm.utils import atomic_write_json, atomic_write_text


@dataclass
class StudyConfig:
    """Train a gated looped model and measure its adaptive depth."""

    out: str = "results/adaptive"
    """Folder for the result files and figures (the run and data go to OUT/run and OUT/data)."""
    env_id: str = "loopwm/Chain-v0"
    """World to study: one where the number of solver iterations per step varies widely."""
    n_bodies: int = 10
    """Bodies (chain links) in the world."""
    episodes: int = 300
    """Episodes collected."""
    minutes: float = 15.0
    """Training time."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(mu_rec=6.0, exit_gate=True))
    """The looped model (with its exit gate)."""
    depth_supervision: float = 0.5
    """Weight of the every-iteration loss (anytime predictions)."""
    max_depth: int = 12
    """Largest loop count evaluated."""
    quick: bool = False
    """A two-minute version for checking the script."""


def main(cfg: StudyConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    episodes, minutes, max_depth = (30, 0.5, 6) if cfg.quick else (cfg.episodes, cfg.minutes, cfg.max_depth)
    data = collect(env_id=cfg.env_id, n_bodies=cfg.n_bodies, out=str(out / "data"), episodes=episodes)
    run = train(TrainConfig(data=str(data), out=str(out / "run"), model=cfg.model, minutes=minutes, steps=10**9,
                            depth_supervision=cfg.depth_supervision, eval_every=10**9))
    model, meta = load_model(run, "cpu")
    ds = TrajectoryDataset.load(data)
    val = np.asarray(meta["val_episodes"])
    depths = [d for d in (1, 2, 3, 4, 6, 8, 12, 16) if d <= max_depth]

    by_difficulty = depth_by_difficulty(model, ds, val, depths)
    rules = {"gate": [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], "delta": [0.003, 0.01, 0.03, 0.1, 0.3],
             "accel": [0.003, 0.01, 0.03, 0.1, 0.3]}
    sweep = exit_sweep(model, ds, val, rules, depths, max_depth)
    atomic_write_text(out / "depth_by_difficulty.jsonl", "".join(json.dumps(r) + "\n" for r in by_difficulty))
    atomic_write_text(out / "exit_sweep.jsonl", "".join(json.dumps(r) + "\n" for r in sweep))

    # the cheapest rule within 2% of the fixed maximum's horizon-10 error
    full = next(r for r in sweep if r["rule"] == "fixed" and r["max_depth"] == max_depth)
    ok = [r for r in sweep if r["rule"] != "fixed" and r["error_h10"] <= 1.02 * full["error_h10"]]
    best = min(ok, key=lambda r: r["mean_iterations"]) if ok else None
    # the gate's own operating point: its cheapest threshold within 2% of the fixed maximum
    gates_ok = [r for r in ok if r["rule"] == "gate"]
    best_gate = min(gates_ok, key=lambda r: r["mean_iterations"]) if gates_ok else None
    # wall-clock on 256 held-out windows of 20 steps, imagined under their real actions
    pool = ds.windows(val, 20)
    pool = ds.batch(pool[np.linspace(0, len(pool) - 1, min(256, len(pool))).astype(int)])
    starts, actions = torch.as_tensor(pool["obs"][:, 0]).float(), torch.as_tensor(pool["action"])
    # the honest baseline: the smallest FIXED depth that is also within 2% of the fixed maximum
    fixed_ok = [r for r in sweep if r["rule"] == "fixed" and r["error_h10"] <= 1.02 * full["error_h10"]]
    best_fixed = min(fixed_ok, key=lambda r: r["mean_iterations"])
    timing = []
    for chosen in {id(r): r for r in (best, best_gate) if r is not None}.values():
        rule = exit_rule_from(chosen["rule"], chosen["threshold"], model)
        for fixed_depth in dict.fromkeys((max_depth, best_fixed["max_depth"])):
            timing += [{"rule": chosen["rule"], "threshold": chosen["threshold"],
                        **wallclock(model, starts, actions, max_depth, rule, b, fixed_depth=fixed_depth)} for b in (1, 256)]
    atomic_write_json(out / "wallclock.json", {"rule": best, "gate": best_gate, "fixed_max": full,
                                               "cheapest_fixed_within_2pct": best_fixed, "timings": timing})

    gate_rule = exit_rule_from("gate", best_gate["threshold"] if best_gate else 0.7, model)
    roll = real_vs_imagined(model, meta["env_id"], meta["env_kwargs"], 300 if not cfg.quick else 40, 4, 7,
                            max_depth, gate_rule)
    # where the gate's iterations go on held-out steps (the data behind its rank correlation)
    one = one_step_errors(model, ds, val, depth=max_depth, exit_rule=gate_rule)
    bins = iterations_by_difficulty(one)
    atomic_write_text(out / "iterations_by_difficulty.jsonl", "".join(json.dumps(r) + "\n" for r in bins))
    plots(out, sweep, by_difficulty, one, bins, gate_rule.threshold, max_depth)
    render = frame_renderer(model, meta["env_id"])
    n = min(150, len(roll["pred"]))
    save_side_by_side_gif(roll["true"][:n], roll["pred"][:n], out / "rollout_iterations.gif", render,
                          notes=[f"{int(i)} iterations (world: {int(s)} solver its)"
                                 for i, s in zip(roll["iterations"][:n], roll["solver_iterations"][:n])])
    summary = summarise(sweep, by_difficulty, timing, best, full, roll, meta, time.time() - start, gate_rule.threshold, bins, best_fixed)
    atomic_write_text(out / "summary.md", summary)
    print(summary)


def iterations_by_difficulty(one: dict, n_bins: int = 8) -> list[dict]:
    """Mean iterations of held-out steps grouped into difficulty quantile bins (solver iterations)."""
    solver, iters = np.asarray(one["solver_iterations"]), np.asarray(one["iterations"], dtype=float)
    edges = np.unique(np.quantile(solver, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, solver, side="right") - 1, 0, len(edges) - 2)
    return [{"solver_iterations_mean": float(solver[which == b].mean()), "iterations_mean": float(iters[which == b].mean()),
             "steps": int((which == b).sum())} for b in range(len(edges) - 1) if (which == b).any()]


def summarise(sweep, by_difficulty, timing, best, full, roll, meta, seconds, gate_threshold, bins, best_fixed) -> str:
    lines = [f"# Adaptive depth on {meta['env_id']} ({meta['env_kwargs']}), model step {meta['step']}", ""]
    lines.append("One-step error by fixed depth and by the world's difficulty (solver-iteration terciles):")
    lines.append("")
    lines.append("| depth | easy | middle | hard |")
    lines.append("|---|---|---|---|")
    for depth in sorted({r["depth"] for r in by_difficulty}):
        cell = {r["group"]: r["error_h1"] for r in by_difficulty if r["depth"] == depth}
        lines.append(f"| {depth} | " + " | ".join(f"{cell.get(g, float('nan')):.4f}" for g in ("easy", "middle", "hard")) + " |")
    lines += ["", "Horizon-10 error against mean iterations per step:", "",
              "| rule | threshold | mean iterations | h10 | h1 | rank corr. with contacts | with solver iterations |",
              "|---|---|---|---|---|---|---|"]
    for r in sweep:
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {r['rule']} | {r['threshold'] if r['threshold'] is not None else r['max_depth']} | "
                     f"{r['mean_iterations']:.2f} | {r['error_h10']:.4f} | {r['error_h1']:.4f} | "
                     f"{f(r.get('iterations_event_spearman'))} | {f(r.get('iterations_solver_spearman'))} |")
    lines.append("")
    if best is None:
        lines.append(f"No exit rule stays within 2% of the fixed maximum ({full['max_depth']} iterations, "
                     f"h10 {full['error_h10']:.4f}).")
    else:
        lines.append(f"Cheapest rule within 2% of the fixed maximum ({full['max_depth']} iterations, h10 "
                     f"{full['error_h10']:.4f}): {best['rule']} at {best['threshold']}, {best['mean_iterations']:.2f} "
                     f"mean iterations ({100 * best['mean_iterations'] / full['mean_iterations']:.0f}% of the maximum), "
                     f"h10 {best['error_h10']:.4f}.")
        lines.append(f"Cheapest FIXED depth within the same 2%: {best_fixed['max_depth']} iterations (h10 {best_fixed['error_h10']:.4f}); "
                     f"the rule uses {best['mean_iterations'] / best_fixed['mean_iterations']:.2f}x that many, so against "
                     "a well-chosen fixed depth (not the maximum) its saving is this ratio.")
        for t in timing:
            lines.append(f"- {t['rule']} at {t['threshold']}, batch {t['batch']}: {t['steps_per_s_adaptive']:.0f} steps/s "
                         f"adaptive vs {t['steps_per_s_fixed']:.0f} fixed at {t['depth_fixed']} ({t['speedup']:.2f}x), "
                         f"{t['mean_iterations_adaptive']:.2f} iterations")
    lines.append("- the gate's mean iterations on held-out steps, by difficulty octile (solver iterations): " + ", ".join(
        f"{b['solver_iterations_mean']:.0f} -> {b['iterations_mean']:.2f}" for b in bins))
    rho = [spearman(roll["iterations"], roll[k]) for k in ("contacts", "solver_iterations")]
    fmt = ["-" if r is None else f"{r:.3f}" for r in rho]
    lines.append(f"- {len(roll['iterations'])}-step open-loop imagined rollout beside the real world (gate at {gate_threshold}; "
                 "the imagined state drifts from the real one, so this correlation is a lower bound): "
                 f"rank correlation of iterations with contacts {fmt[0]}, with solver iterations {fmt[1]}")
    lines.append(f"\n({seconds / 60:.1f} minutes in all)\n")
    return "\n".join(lines)


def plots(out: Path, sweep, by_difficulty, one, bins, gate_threshold, max_depth) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for rule, style in (("fixed", "ko-"), ("gate", "C3s-"), ("delta", "C0^-"), ("accel", "C2v-")):
        pts = sorted((r["mean_iterations"], r["error_h10"]) for r in sweep if r["rule"] == rule)
        if pts:
            ax.plot(*zip(*pts), style, label=rule if rule != "fixed" else "fixed depth")
    ax.set_xlabel("mean loop iterations per step"), ax.set_ylabel("open-loop error at horizon 10")
    ax.set_title("Accuracy against compute"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "accuracy_vs_compute.png"), plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for group, colour in (("easy", "C2"), ("middle", "C1"), ("hard", "C3")):
        pts = sorted((r["depth"], r["error_h1"]) for r in by_difficulty if r["group"] == group)
        if pts:
            ax.plot(*zip(*pts), "o-", color=colour, label=f"{group} steps")
    ax.set_xlabel("loop iterations (fixed)"), ax.set_ylabel("one-step error"), ax.set_yscale("log")
    ax.set_title("Does depth help hard steps?"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "depth_by_difficulty.png"), plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    solver, iters = np.asarray(one["solver_iterations"]), np.asarray(one["iterations"])
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(iters))
    ax.scatter(solver + 1, iters + jitter, s=5, alpha=0.25, color="C0", label="held-out steps")
    ax.plot([b["solver_iterations_mean"] + 1 for b in bins], [b["iterations_mean"] for b in bins], "C3o-",
            label="mean per difficulty octile")
    ax.set_xscale("log"), ax.set_xlabel("world's solver iterations this step + 1"), ax.set_ylabel("model's loop iterations")
    ax.set_ylim(0, max_depth + 1), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax.set_title(f"Where the gate's iterations go (threshold {gate_threshold})")
    fig.tight_layout(), fig.savefig(out / "iterations_vs_difficulty.png"), plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(StudyConfig))
