"""The benchmark's figures, drawn from its result rows (and run curves) only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loopwm.eval.bench_report import is_loop
from loopwm.eval.plots import _plt


def _mean_curve(rows, world, budget, model, key="error"):
    sel = [r for r in rows if (r["world"], r["budget"], r["model"]) == (world, budget, model)]
    hs = sorted({r["horizon"] for r in sel})
    return np.array(hs), np.array([np.mean([r[key] for r in sel if r["horizon"] == h]) for h in hs])


def plot_all(rows: list[dict], depth_rows: list[dict], out: Path, curves: list[dict] | None = None) -> list[Path]:
    plt = _plt()
    paths = []
    worlds = sorted({r["world"] for r in rows})
    models = sorted({r["model"] for r in rows}, key=lambda m: (m != "looped", m))

    budgets = [b for b in ("steps", "wallclock", "converged") if any(r["budget"] == b for r in rows)]

    # 1. open-loop error versus horizon, per regime (columns) and budget currency (rows)
    fig, axes = plt.subplots(len(budgets), len(worlds), figsize=(5.5 * len(worlds), 4 * len(budgets)), dpi=110, squeeze=False)
    for axrow, budget in zip(axes, budgets):
        for ax, world in zip(axrow, worlds):
            others = iter(f"C{i}" for i in (0, 1, 2, 4, 5, 6, 7, 8, 9, 0, 1, 2))  # C3 (red) is the looped model's alone
            for m in models:
                hs, err = _mean_curve(rows, world, budget, m)
                ax.plot(hs, err, lw=2.4 if m == "looped" else 1.2, color="C3" if m == "looped" else next(others), label=m)
            sel = [r for r in rows if r["world"] == world and r["budget"] == budget]
            for key, ls in (("floor_copy_last", "--"), ("floor_constant_velocity", "-."), ("floor_mean", ":")):
                hs = sorted({r["horizon"] for r in sel})
                ax.plot(hs, [np.mean([r[key] for r in sel if r["horizon"] == h]) for h in hs], "k", ls=ls, lw=1, label=key[6:])
            ax.set_yscale("log"), ax.set_title(f"{world}, equal {budget}"), ax.set_xlabel("horizon"), ax.grid(alpha=0.3)
        axrow[0].set_ylabel("normalised MSE")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out / "error_vs_horizon.png"), plt.close(fig)
    paths.append(out / "error_vs_horizon.png")

    # 2. parameter efficiency: horizon-10 error against parameters, one panel per budget currency
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), dpi=110, squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        for i, world in enumerate(worlds):
            pts = []
            for m in models:
                sel = [r for r in rows if r["world"] == world and r["budget"] == budget and r["model"] == m and r["horizon"] == 10]
                if sel:
                    errs = [r["error"] for r in sel]
                    pts.append((sel[0]["params"], np.mean(errs), np.std(errs), m))
            deep = sorted(p for p in pts if p[3].startswith("deep"))
            ax.errorbar([p[0] for p in deep], [p[1] for p in deep], [p[2] for p in deep], fmt="o-", color=f"C{i}",
                        capsize=3, label=f"{world}: deep transformers")
            for p in deep:
                ax.annotate(p[3][5:], (p[0], p[1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            # the loop's own curve: the looped model and narrower ones (looped-dN), stars joined by a line
            loops = sorted(p for p in pts if is_loop(p[3]))
            if loops:
                ax.errorbar([p[0] for p in loops], [p[1] for p in loops], [p[2] for p in loops], fmt="*-", ms=14,
                            color=f"C{i}", capsize=3, label=f"{world}: looped (one shared block)")
            for p in loops[:-1] if len(loops) > 1 else []:  # the widest (64) is "looped"; name the narrower ones
                ax.annotate(p[3][len("looped-"):], (p[0], p[1]), fontsize=6, xytext=(3, -9), textcoords="offset points")
        ax.set_xscale("log"), ax.set_xlabel("parameters"), ax.set_ylabel("error at horizon 10"), ax.grid(alpha=0.3)
        ax.legend(fontsize=7), ax.set_title(f"Parameter efficiency, equal {budget}")
    fig.tight_layout(), fig.savefig(out / "param_efficiency.png"), plt.close(fig)
    paths.append(out / "param_efficiency.png")

    # 3. iterative latent depth: error versus test-time iterations of each trained loop (rows of older
    # benches name no model: they are the looped model's)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    loops = sorted({r.get("model", "looped") for r in depth_rows}, key=lambda m: (m != "looped", m))
    for world in worlds:
        for loop in loops:
            sel = [r for r in depth_rows if r["world"] == world and r.get("model", "looped") == loop]
            depths = sorted({r["depth"] for r in sel})
            if depths:
                ax.plot(depths, [np.mean([r["error_h10"] for r in sel if r["depth"] == d]) for d in depths], "o-",
                        label=world if len(loops) == 1 else f"{world}, {loop}")
    ax.set_xlabel("test-time loop iterations"), ax.set_ylabel("error at horizon 10"), ax.grid(alpha=0.3)
    ax.legend(fontsize=8), ax.set_title("Iterative latent depth (each trained loop)")
    fig.tight_layout(), fig.savefig(out / "depth_scaling.png"), plt.close(fig)
    paths.append(out / "depth_scaling.png")

    # 4. compute: FLOPs per step and measured speed
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    world = worlds[0]
    firsts = [next(r for r in rows if r["world"] == world and r["model"] == m) for m in models]
    x = np.arange(len(models))
    axes[0].bar(x, [r["flops_per_step"] for r in firsts], color=["C3" if m == "looped" else "C0" for m in models])
    axes[0].set_ylabel("FLOPs per imagined step (batch 1)")
    axes[1].bar(x - 0.2, [r["steps_per_s_b1"] for r in firsts], 0.4, label="batch 1")
    axes[1].bar(x + 0.2, [r["steps_per_s_b256"] / 256 for r in firsts], 0.4, label="batch 256 (/256)")
    axes[1].set_ylabel("imagined steps per second"), axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, models, rotation=30, fontsize=8), ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Compute per step ({world})"), fig.tight_layout(), fig.savefig(out / "compute.png"), plt.close(fig)
    paths.append(out / "compute.png")

    # 5. learning curves: validation loss against gradient steps, per world (the converged budget
    # when there is one: it shows whether each model had stopped improving)
    curves = [c for c in curves or [] if c["val_curve"]]
    if curves:
        budget = "converged" if any(c["budget"] == "converged" for c in curves) else curves[0]["budget"]
        fig, axes = plt.subplots(1, len(worlds), figsize=(5.5 * len(worlds), 4), dpi=110, squeeze=False)
        for ax, world in zip(axes[0], worlds):
            for i, m in enumerate(models):
                for c in [c for c in curves if (c["world"], c["model"], c["budget"]) == (world, m, budget)]:
                    steps, vals = zip(*c["val_curve"])
                    colour = "C3" if m == "looped" else f"C{i % 10}"
                    ax.plot(steps, vals, color=colour, lw=2 if m == "looped" else 1,
                            label=m if c["seed"] == 0 else None, ls="-" if c["stop_reason"] == "plateau" else "--")
                    if c.get("val_avg_curve"):  # the weight average's curve, which the plateau rule read
                        ax.plot(*zip(*c["val_avg_curve"]), color=colour, lw=1, ls=":", alpha=0.8)
            ax.set_yscale("log"), ax.set_xlabel("gradient steps"), ax.set_ylabel("validation observation loss")
            ax.set_title(f"{world}, {budget} (dashed: stopped by the cap; dotted: weight average)"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        fig.tight_layout(), fig.savefig(out / "learning_curves.png"), plt.close(fig)
        paths.append(out / "learning_curves.png")
    return paths
