"""The report of a depth study: summary.md and depth_study.png of a folder written by
scripts/depth_study.py, from its result files alone (runs.jsonl, results.jsonl, strata.jsonl,
long.jsonl, exits.jsonl, world.json) and the settings in its study.json. The study writes it after
every invocation; run this to rewrite it after a change to the report, without loading a model:

    python scripts/depth_report.py --study results/depth-r005-local-n32
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import tyro

from loopwm.utils import atomic_write_text


@dataclass
class ReportConfig:
    """Rewrite a depth study's summary from its files."""

    study: str = "results/depth"
    """A folder written by scripts/depth_study.py."""


def horizon_text(cfg) -> str:
    """The training horizon as the title states it, with the curriculum, loss weighting and the loops'
    settling penalty when set (studies differing in any of them are different settings to compare)."""
    text = f"{cfg.horizon_start} then {cfg.horizon} over the last {cfg.horizon_final:.0%}" if cfg.horizon_start > 0 else f"{cfg.horizon}"
    text += f", {cfg.step_weighting} step weighting" if cfg.step_weighting != "mean" else ""
    if cfg.settle_weight:
        text += f", loops' settling penalty {cfg.settle_weight:g}" + (f" over the last {1 - cfg.settle_from:.0%}" if cfg.settle_from else "")
    return text


def _per_token(rule: str) -> bool:
    """Whether an exit rule answers for each disc on its own (fixed depth and unknown names: no)."""
    from loopwm.models.exits import EXIT_RULES

    return rule in EXIT_RULES and EXIT_RULES[rule].per_token


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def one_step(strata: list[dict], name: str, size: int, depth: int) -> tuple[float, int] | None:
    """One-step error over every window of the strata and how many (loopwm.eval.adaptive.strata_error)."""
    from loopwm.eval.adaptive import strata_error

    return strata_error(strata, name, size, depth)


def best_depth(results: list[dict], name: str, size: int, strata: list[dict] | None = None) -> dict:
    """The result row of the test depth with the lowest one-step error (over the strata's windows
    when they were scored, else the open-loop h1)."""
    from loopwm.eval.adaptive import best_depth_row

    return best_depth_row([r for r in results if r["model"] == name and r["size"] == size], strata or [])


def saturation_depth(errors: dict[int, float], tol: float = 0.02, noise: dict[int, float] | None = None) -> int:
    """The fewest test-time iterations whose error is within tol of the best over all depths tried,
    or within two paired standard errors of it (`noise`, per depth; error_by_sweeps' paired_se):
    where more passes stop paying, or stop paying measurably."""
    best, noise = min(errors.values()), noise or {}
    return min(d for d, e in errors.items() if e <= (1 + tol) * best or e - best <= 2 * noise.get(d, 0.0))


def study_models(asked: list[str], runs: dict, results: list[dict]) -> list[str]:
    """Every model of a study folder: those of this invocation first, then the ones earlier
    invocations trained and scored there (a stack added later must not hide the loop from the
    summary; a model trained but not scored yet has nothing to show)."""
    scored = {r["model"] for r in results}
    return list(dict.fromkeys([*asked, *(m for m in runs if m in scored)]))


def long_table(long: list[dict], models: list[str], size: int) -> list[str]:
    """The long stage's rows as summary lines: each model against the best one on the same windows,
    as a gap with two paired standard errors (a gap inside them is not measured)."""
    from loopwm.eval.openloop import paired_gap

    rows = [r for m in models for r in long if r["model"] == m and r["size"] == size]
    if not rows:
        return []
    lines = ["", f"## Over up to {max(r['asked'] for r in rows):,} windows (long stage): each model against the best "
             "on the same windows (gap ± two paired standard errors)", "",
             "| model | depth | windows | h1 | vs best h1 | h10 | vs best h10 |", "|---|---|---|---|---|---|---|"]
    best = {k: min(rows, key=lambda r: r[k]) for k in ("h1", "h10")}

    def gap(r: dict, k: str) -> str:
        ref = best[k]
        if r is ref:
            return "best"
        if (r["episodes"], r["windows"]) != (ref["episodes"], ref["windows"]):
            return "other windows"
        g, se = paired_gap(r[f"window_{k}"], ref[f"window_{k}"])
        return f"+{g:.1%} ± {2 * se:.1%}"

    for r in rows:
        lines.append(f"| {r['model']} | {r['depth']} | {r['windows']:,} | {r['h1']:.4f} | {gap(r, 'h1')} | "
                     f"{r['h10']:.4f} | {gap(r, 'h10')} |")
    return lines


def exits_table(exits: list[dict], N: int) -> list[str]:
    """The exits stage's rows as summary lines, one table per model, world size and number of windows:
    each rule against the fixed depth of its compute, round(M), and against the fixed maximum, both
    scored on the same windows."""
    lines = []
    groups = dict.fromkeys((r["model"], r.get("size", N), r.get("asked", 512)) for r in exits)  # before session 24: 512
    for name, n, asked in groups:
        rows = [r for r in exits if (r["model"], r.get("size", N), r.get("asked", 512)) == (name, n, asked)]
        fixed = {r["max_depth"]: r for r in rows if r["rule"] == "fixed"}
        if not fixed:
            continue
        top = fixed[max(fixed)]
        lines += ["", f"## {name}: exit rules against fixed depth ({n} discs, {asked:,} windows; horizon-10 error, "
                  "iterations per step)", "",
                  f"Fixed {max(fixed)} iterations: h10 {top['error_h10']:.4f}, h1 {top['error_h1']:.4f}. Compute M is "
                  "iterations per token (per-token rules: the mean over discs of the iterations that updated each; "
                  "the others: iterations per scene)." + (" In brackets: the rule's h10 gap to that fixed depth on the "
                  "same windows, ± two paired standard errors; 'at equal cost': against the two fixed depths "
                  "that bracket M, mixed to cost M." if any("vs_round" in r for r in rows) else ""), "",
                  "| rule | threshold | M | iterations per scene | h1 | h10 | fixed round(M): h10 | beats round(M) | "
                  "within 2% of the fixed maximum | rank correlation with solver sweeps |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["rule"] == "fixed":
                continue
            M = r.get("mean_token_iterations", r["mean_iterations"])
            m = max(1, round(M))
            near = fixed[r["vs_round"]["depth"]] if "vs_round" in r else fixed.get(m) or fixed[min(fixed, key=lambda d: abs(d - m))]
            ok = r["error_h10"] <= 1.02 * top["error_h10"]
            beats = r["error_h10"] < near["error_h10"]
            gap = {k: f" [{r[k]['gap_h10']:+.1%} ± {2 * r[k]['se_h10']:.1%}]" if k in r else ""
                   for k in ("vs_round", "vs_max", "vs_equal_cost")}
            equal_cost = f"; at equal cost{gap['vs_equal_cost']}" if gap["vs_equal_cost"] else ""
            rho = r["iterations_solver_spearman"]
            rho_tok = r.get("token_iterations_solver_spearman")
            rho_cell = ("n/a" if rho is None else f"{rho:.2f}") + (f" (per token {rho_tok:.2f})" if _per_token(r["rule"]) and rho_tok is not None else "")
            lines.append(f"| {r['rule']} | {r['threshold']:g} | {M:.2f} | {r['mean_iterations']:.2f} | {r['error_h1']:.4f} | "
                         f"{r['error_h10']:.4f} | {near['error_h10']:.4f} (depth {near['max_depth']}) | "
                         f"{'yes' if beats else 'no'}{gap['vs_round']}{equal_cost} | {'yes' if ok else 'no'} ({M / max(fixed):.0%} of its "
                         f"iterations){gap['vs_max']} | "
                         f"{rho_cell} |")
    return lines


def write_summary(out: Path, cfg) -> None:
    """summary.md and depth_study.png of the study folder `out`, from its result files and its
    settings `cfg` (a DepthStudyConfig: world, budget, test depths and sizes, models)."""
    runs = {r["model"]: r for r in _read(out / "runs.jsonl")}
    results, strata = _read(out / "results.jsonl"), _read(out / "strata.jsonl")
    cfg = replace(cfg, models=study_models(cfg.models, runs, results))
    world = json.loads((out / "world.json").read_text())
    N = cfg.n_bodies
    budget = (f"until validation stops improving by {cfg.until_plateau:.0%} over the last fifth, at most {cfg.steps} steps"
              if cfg.until_plateau > 0 else f"{cfg.minutes:g} minutes each (at most {cfg.steps} steps)" if cfg.minutes > 0
              else f"{cfg.steps} steps each")
    radius = f" of radius {cfg.rail_radius:g}" if cfg.rail_radius > 0 else ""
    lines = [f"# Depth study: {cfg.env_id}, trained on {N} discs{radius} ({budget}, batch {cfg.batch_size}, "
             f"lr {cfg.lr:g}, context {cfg.context}, horizon {horizon_text(cfg)}, seed {cfg.seed})", "",
             "## The worlds: solver sweeps per step", "",
             "| discs | mean | median | p90 | p99 | max | free flight (0) | 8+ sweeps |", "|---|---|---|---|---|---|---|---|"]
    for n, w in sorted(world.items(), key=lambda kv: int(kv[0])):
        hard = sum(v for k, v in w["fraction"].items() if k[0].isdigit() and int(k.split("-")[0].rstrip("+")) >= 8)
        lines.append(f"| {n} | {w['mean']:.1f} | {w['p50']:.0f} | {w['p90']:.0f} | {w['p99']:.0f} | {w['max']} | "
                     f"{w['fraction'].get('0', 0):.0%} | {hard:.0%} |")
    lines += ["", f"## Error on {N} discs (held-out episodes); looped models at their best test depth", "",
              "| model | params (core) | steps | train min | last val losses | stopped (still improving) | depth | "
              "h1 (all windows) | h1 (512) | h10 (512) | copy-last h1 / h10 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in cfg.models:
        if name not in runs or not any(r["model"] == name and r["size"] == N for r in results):
            continue
        r = best_depth(results, name, N, strata)
        steady = one_step(strata, name, N, r["depth"])
        run = runs[name]
        last = ", ".join(f"{v:.4f}" for _, v in run["val_curve"][-2:])
        flag = {True: "yes", False: "no"}.get(run.get("still_improving"), "")
        stopped = f"{run.get('stop_reason', 'steps')} ({flag})" if flag else run.get("stop_reason", "steps")
        core = f" ({run['core_params']:,})" if "core_params" in run else ""
        lines.append(f"| {name} | {r['params']:,}{core} | {run['steps']} | {run['train_seconds'] / 60:.1f} | {last} | {stopped} | {r['depth']} | "
                     + (f"{steady[0]:.4f} ({steady[1]:,}) | " if steady else " | ")
                     + f"{r['h1']:.4f} | {r['h10']:.4f} | {r['copy_last_h1']:.3f} / {r['copy_last_h10']:.3f} |")
    lines += long_table(_read(out / "long.jsonl"), cfg.models, N)
    lines += ["", "Core: the shared block and its injection, or the distinct blocks; the rest (encoder, prelude, "
              "coda, heads) is scaffold every model of the same shape shares, so a stack of K blocks can be at most "
              "(scaffold + K blocks) / (scaffold + 1 block) times the loop's size."]
    lines += ["", "## One-step error by the world's solver sweeps (trained size, best depth)", ""]
    names = [m for m in cfg.models if any(s["model"] == m and s["size"] == N for s in strata)]
    bins = list(dict.fromkeys(s["sweeps"] for s in sorted(strata, key=lambda s: s["solver_iterations_mean"]) if s["size"] == N))
    lines += ["| model | depth | " + " | ".join(bins) + " |", "|---|---|" + "---|" * len(bins)]
    for name in names:
        d = best_depth(results, name, N, strata)["depth"]
        cells = {s["sweeps"]: s["error_h1"] for s in strata if s["model"] == name and s["size"] == N and s["depth"] == d}
        lines.append(f"| {name} | {d} | " + " | ".join(f"{cells[b]:.4f}" if b in cells else "" for b in bins) + " |")
    counts = {s["sweeps"]: s["windows"] for s in strata if s["size"] == N and s["model"] == names[0]} if names else {}
    lines.append("| (windows) | | " + " | ".join(str(counts.get(b, "")) for b in bins) + " |")
    loops = [m for m in cfg.models if m.startswith("looped")]
    for name in loops:
        lines += ["", f"## {name}: one-step error against test-time iterations, per world size (trained on {N})", "",
                  "Over every window of the strata where they were scored (else the open-loop h1 over 512, marked *); "
                  "'stops at': the fewest iterations within 2% of the best (0.5% in brackets).", "",
                  "| discs | " + " | ".join(str(d) for d in cfg.test_depths) + " | stops at | copy-last (512) |",
                  "|---|" + "---|" * (len(cfg.test_depths) + 2)]
        for n in sorted({r["size"] for r in results if r["model"] == name}):
            rows = {r["depth"]: r for r in results if r["model"] == name and r["size"] == n}
            errs = {}
            for d, r in rows.items():
                steady = one_step(strata, name, n, d)
                errs[d] = (steady[0], "") if steady else (r["h1"], "*")
            flat = {d: e for d, (e, _) in errs.items()}
            lines.append(f"| {n} | " + " | ".join(f"{errs[d][0]:.4f}{errs[d][1]}" if d in errs else "" for d in cfg.test_depths)
                         + f" | {saturation_depth(flat)} ({saturation_depth(flat, 0.005)}) | "
                         f"{next(iter(rows.values()))['copy_last_h1']:.4f} |")
        # The question per step rather than per scene: do the steps whose impulse travels
        # farther (more solver sweeps) keep gaining from iterations after the easy ones stop?
        cells = [s for s in strata if s["model"] == name]
        order = list(dict.fromkeys(s["sweeps"] for s in sorted(cells, key=lambda s: s["solver_iterations_mean"])))
        lines += ["", f"Iterations at which each stratum's one-step error stops falling (the fewest within 2% of its "
                  f"best or within two paired standard errors of it; windows in brackets), {name}:", "", "| discs | " + " | ".join(order) + " |",
                  "|---|" + "---|" * len(order)]
        for n in sorted({s["size"] for s in cells}):
            row = []
            for b in order:
                here = [s for s in cells if s["size"] == n and s["sweeps"] == b]
                errs = {s["depth"]: s["error_h1"] for s in here}
                noise = {s["depth"]: s.get("paired_se", 0.0) for s in here}  # strata scored before 2026-12-04: none
                windows = here[0]["windows"] if here else 0
                row.append(f"{saturation_depth(errs, noise=noise)} ({windows})" if errs else "")
            lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += ["", "## Other sizes: each model's one-step error over all windows (open-loop h1 over 512 where no strata) "
              "/ horizon-10 error over 512 (looped at the test depth nearest its mean training loop count, and at its best)", "",
              "| model | " + " | ".join(f"{n} discs" for n in sorted(cfg.test_sizes)) + " |",
              "|---|" + "---|" * len(cfg.test_sizes)]
    for name in cfg.models:
        cells = []
        for n in sorted(cfg.test_sizes):
            rows = [r for r in results if r["model"] == name and r["size"] == n]
            if not rows:
                cells.append("")
                continue
            at_train = min(rows, key=lambda r: (abs(r["depth"] - cfg.mu_rec), r["depth"]))  # mu_rec 6: depth 4 of 4, 8
            best = best_depth(results, name, n, strata)

            def h1(r):
                steady = one_step(strata, name, n, r["depth"])
                return f"{steady[0]:.4f}" if steady else f"{r['h1']:.4f}*"

            cell = f"{h1(at_train)} / {at_train['h10']:.4f}" + (f" (at {at_train['depth']})" if len(rows) > 1 else "")
            if best is not at_train:
                cell += f" (depth {best['depth']}: {h1(best)} / {best['h10']:.4f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += exits_table(_read(out / "exits.jsonl"), N)
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    plot(out, cfg, results, strata)


def plot(out: Path, cfg, results: list[dict], strata: list[dict]) -> None:
    """Error by difficulty on the training size, and a loop's error against test-time iterations per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    N = cfg.n_bodies
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for name in cfg.models:
        rows = [r for r in results if r["model"] == name and r["size"] == N]
        if not rows:
            continue
        d = best_depth(results, name, N, strata)["depth"]
        pts = sorted((s["solver_iterations_mean"], s["error_h1"]) for s in strata
                     if s["model"] == name and s["size"] == N and s["depth"] == d)
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", label=f"{name} (depth {d})", linestyle="--" if name.endswith("-full") else "-")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_yscale("log")
    ax.set_xlabel("world's solver sweeps in the step (stratum mean)")
    ax.set_ylabel("one-step error")
    ax.set_title(f"error by difficulty, {N} discs")
    if ax.get_legend_handles_labels()[0]:  # a study with no strata or no loop has nothing to label
        ax.legend(fontsize=7)
    ax = axes[1]
    loops = [m for m in cfg.models if m.startswith("looped")]
    loop = "looped" if "looped" in loops else (loops[0] if loops else "")  # the local one when both ran
    for n in sorted({r["size"] for r in results}):
        # one-step error over all windows where scored (open-loop h1 otherwise), over the 512-window floor
        rows = sorted((r["depth"], (one_step(strata, loop, n, r["depth"]) or (r["h1"],))[0] / r["copy_last_h1"])
                      for r in results if r["model"] == loop and r["size"] == n)
        if rows:
            x, y = zip(*rows)
            ax.plot(x, y, marker="o", label=f"{n} discs" + (" (trained)" if n == N else ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test-time loop iterations")
    ax.set_ylabel("one-step error (all windows) / copy-last h1 (512)")
    ax.set_title(f"{loop}: error against iterations, per world size")
    if ax.get_legend_handles_labels()[0]:  # a study with no strata or no loop has nothing to label
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "depth_study.png", dpi=110)
    plt.close(fig)


def main(cfg: ReportConfig) -> None:
    from depth_study import study_settings  # imported here: depth_study imports this module

    folder = Path(cfg.study)
    if not (folder / "study.json").exists() or not (folder / "world.json").exists():
        raise SystemExit(f"{folder} has no study.json and world.json: point --study at a folder scripts/depth_study.py wrote")
    write_summary(folder, study_settings(folder))
    print(f"wrote {folder / 'summary.md'}")


if __name__ == "__main__":
    main(tyro.cli(ReportConfig))
