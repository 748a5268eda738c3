"""The benchmark's written report: table.md and findings.md (and, through bench_plots, the figures),
computed from its result rows only, so `loopwm bench --report-only` can redraw them from the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from loopwm.utils import LoopWMError, atomic_write_text

BUDGETS = ("steps", "wallclock", "converged")


def is_loop(model: str) -> bool:
    """The looped model or a narrower one (looped-dN)."""
    return model.split("-")[0] == "looped"


def write_reports(out: Path) -> str:
    """table.md, findings.md and the plots, from results.jsonl and depth.jsonl in `out`."""
    from loopwm.eval.bench_plots import plot_all

    def read(name):
        path = out / name
        if not path.exists():
            raise LoopWMError(f"{path} not found: run the benchmark first (without --report-only)")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    rows, depth_rows = read("results.jsonl"), read("depth.jsonl")
    curves = read("curves.jsonl") if (out / "curves.jsonl").exists() else []  # older benchmarks have none
    table, found = markdown_table(rows), findings(rows, depth_rows)
    atomic_write_text(out / "table.md", table)
    atomic_write_text(out / "findings.md", found)
    plot_all(rows, depth_rows, out, curves)
    return table + "\n" + found


def _mean_error(rows: list[dict], world: str, budget: str, model: str, h: int) -> tuple[float, float]:
    errs = [r["error"] for r in rows if (r["world"], r["budget"], r["model"], r["horizon"]) == (world, budget, model, h)]
    return (float(np.mean(errs)), float(np.std(errs))) if errs else (math.nan, math.nan)


def markdown_table(rows: list[dict]) -> str:
    """Mean (and spread over seeds) of the error at horizons 1, 10, 50 per world, budget and model."""
    keys = sorted({(r["world"], r["budget"], r["model"]) for r in rows}, key=lambda k: (k[0], k[1], _order(k[2])))
    hs = [h for h in (1, 10, 50) if any(r["horizon"] == h for r in rows)]
    head = "| world | budget | model | params | FLOPs/step | iters | " + " | ".join(f"h{h}" for h in hs) + \
           " | steps/s b1 | steps/s b256 | train steps | train min | converged |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for world, budget, model in keys:
        sel = [r for r in rows if (r["world"], r["budget"], r["model"]) == (world, budget, model)]
        cells = []
        for h in hs:
            mean, std = _mean_error(rows, world, budget, model, h)
            cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if len({r['seed'] for r in sel}) > 1 else ""))
        r0 = sel[0]
        firsts = [r for r in sel if r["horizon"] == 1]
        steps = np.mean([r["train_steps"] for r in firsts])
        minutes = np.mean([r["train_seconds"] for r in firsts]) / 60
        plateaus = sum(r.get("stop_reason") == "plateau" for r in firsts)
        converged = f"{plateaus}/{len(firsts)} seeds" if budget == "converged" else "-"
        lines.append(f"| {world} | {budget} | {model} | {r0['params']:,} | {r0['flops_per_step']:,} | {r0['iterations']:.1f} | "
                     + " | ".join(cells) + f" | {r0['steps_per_s_b1']:.0f} | {r0['steps_per_s_b256']:.0f} | {steps:.0f} | "
                     f"{minutes:.1f} | {converged} |")
    for world in sorted({r["world"] for r in rows}):
        sel = [r for r in rows if r["world"] == world]
        for name in sorted(k[6:] for k in rows[0] if k.startswith("floor_")):
            cells = [f"{np.mean([r['floor_' + name] for r in sel if r['horizon'] == h]):.4f}" for h in hs]
            lines.append(f"| {world} | - | floor: {name} | 0 | 0 | - | " + " | ".join(cells) + " | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def findings(rows: list[dict], depth_rows: list[dict] = ()) -> str:
    """The questions the benchmark exists to answer, answered from the rows (means over seeds)."""
    lines = ["# Findings (computed from results.jsonl; means over seeds, spread in table.md)", ""]
    if not any(is_loop(r["model"]) for r in rows):
        return "\n".join(lines + ["(no looped model in this run: nothing to compare)", ""])
    worlds = sorted({r["world"] for r in rows})
    budgets = [b for b in BUDGETS if any(r["budget"] == b for r in rows)]
    horizons = [h for h in (1, 10, 50) if any(r["horizon"] == h for r in rows)]
    titles = {"steps": "Equal gradient steps", "wallclock": "Equal wall-clock time",
              "converged": "Each model trained until its validation error stopped improving"}
    for budget in budgets:
        lines.append(f"## {titles[budget]}")
        if budget == "converged":
            capped = sorted({f"{r['model']} ({r['world']}, seed {r['seed']})" for r in rows
                             if r["budget"] == budget and r["horizon"] == 1 and r.get("stop_reason") != "plateau"})
            lines.append("- Every run plateaued before the cap." if not capped else
                         "- Still improving at the step cap (not converged; read their errors as upper bounds): "
                         + ", ".join(capped) + ".")
        for world in worlds:
            params = {r["model"]: r["params"] for r in rows if r["world"] == world}  # sizes depend on the world
            deep = sorted((params[m], m) for m in params if m.startswith("deep"))
            for loop in sorted((m for m in params if is_loop(m)), key=_order):  # looped, then narrower
                name = "looped model" if loop == "looped" else f"{loop} loop"
                for h in (1, 10):
                    looped, spread = _mean_error(rows, world, budget, loop, h)
                    if math.isnan(looped):
                        continue
                    # "matches": within one standard deviation (over seeds) of the looped model's error
                    match = [(p, m) for p, m in deep if _mean_error(rows, world, budget, m, h)[0] <= looped + spread]
                    if match:
                        p, m = match[0]
                        lines.append(f"- {world}: the smallest deep transformer that matches the {name}'s horizon-{h} error "
                                     f"({looped:.4f} ± {spread:.4f}) is {m} ({_mean_error(rows, world, budget, m, h)[0]:.4f}), "
                                     f"with {p / params[loop]:.2f}x the {name}'s parameters.")
                    elif deep:
                        biggest = deep[-1]
                        lines.append(f"- {world}: no deep transformer up to {biggest[1]} ({biggest[0] / params[loop]:.1f}x the "
                                     f"{name}'s parameters) reaches its horizon-{h} error ({looped:.4f}).")
                    else:
                        lines.append(f"- {world}: {name} horizon-{h} error {looped:.4f}.")
                by_depth: dict[int, list[float]] = {}
                for d in depth_rows:  # rows of older benches name no model: they are the looped model's
                    if d["world"] == world and d.get("model", "looped") == loop:
                        by_depth.setdefault(int(d["depth"]), []).append(d["error_h10"])
                best = sorted((float(np.mean(v)), k) for k, v in by_depth.items())  # means over seeds
                if best and budget == budgets[0]:  # the depth curve is measured on the first budget's runs
                    # the curve is scored on every window long enough for horizon 10, the table on those
                    # long enough for the longest horizon: compare depths within the curve only
                    its = [r["iterations"] for r in rows if r["world"] == world and r["model"] == loop and r["budget"] == budget]
                    trained = round(float(np.mean(its))) if its else None
                    at_trained = f"; {float(np.mean(by_depth[trained])):.4f} at the {trained} it trained with" \
                        if trained in by_depth else ""
                    lines.append(f"  The {name}'s best test-time depth at h10: {best[0][1]} iterations "
                                 f"({best[0][0]:.4f}{at_trained}; scored on every window that reaches horizon 10).")
            for other, label in (("rssm", "the RSSM"), ("gru", "the GRU world model"),
                                 ("rssm-eq", "the RSSM at about equal parameters"),
                                 ("gru-eq", "the GRU world model at about equal parameters")):
                if other not in params or "looped" not in params:
                    continue
                parts = []
                for h in horizons:
                    (lo, ls), (ro, rs) = _mean_error(rows, world, budget, "looped", h), _mean_error(rows, world, budget, other, h)
                    if not (math.isnan(lo) or math.isnan(ro)):  # both scored at this horizon
                        verdict = "within the seed spread" if abs(lo - ro) <= max(ls, rs) else \
                            ("looped better" if lo < ro else label + " better")
                        parts.append(f"h{h} {lo:.4f} vs {ro:.4f} ({verdict})")
                lines.append(f"  Looped ({params['looped']:,} params) against {label} ({params[other]:,}): " + ", ".join(parts) + ".")
            sel = [r for r in rows if r["world"] == world and r["budget"] == budget and r["horizon"] == 10 and r["model"] == "looped"]
            if sel:
                looped = _mean_error(rows, world, budget, "looped", 10)[0]
                copy_last = float(np.mean([r["floor_copy_last"] for r in sel]))
                lines.append(f"  Looped against the copy-last-observation floor at h10: {looped:.4f} vs {copy_last:.4f} "
                             f"({'beats it' if looped < copy_last else 'does NOT beat it'}).")
        lines.append("")
    if len(worlds) > 1:
        lines.append("## Error at horizon 10 relative to the best floor (lower is better), equal steps")
        budget = budgets[0]
        for world in worlds:
            sel = [r for r in rows if r["world"] == world and r["horizon"] == 10]
            if not sel:
                continue
            floor = min(np.mean([r[k] for r in sel]) for k in sel[0] if k.startswith("floor_"))
            models = sorted({r["model"] for r in rows if r["world"] == world}, key=_order)
            cells = [f"{m} {_mean_error(rows, world, budget, m, 10)[0] / floor:.3f}" for m in models]
            lines.append(f"- {world}: " + ", ".join(cells))
        lines.append("")
    return "\n".join(lines)


def _order(name: str) -> tuple:
    if name == "looped":
        return (0, 0)
    if name.startswith("looped-d") and name[len("looped-d"):].isdigit():  # narrower loops after it, widest first
        return (0, 1, -int(name[len("looped-d"):]))
    if name.startswith("deep-"):
        parts = name.split("-")
        return (1, int(parts[1]), len(parts))
    return (2, name)
