"""Several depth studies side by side: every model of every study (seeds, variants) in one table, the
parameter ratio at which a stack matches each loop, and error against parameters in one plot.

    python scripts/depth_compare.py --studies results/depth-converged results/depth-converged-seed1 \
        results/depth-ds results/depth-ds-seed1 results/depth-lean --out results/depth-compare

Reads only what `scripts/depth_study.py` wrote (runs.jsonl, results.jsonl, strata.jsonl, long.jsonl, and the
study's seed from study.json or, for older studies, its summary's title); trains and scores nothing.
Studies compared with each other should share their world and training settings (the title of each
study's summary.md says them); a loop and a stack count as a pair only within one seed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from loopwm.eval.adaptive import best_depth_row
from loopwm.utils import atomic_write_text


@dataclass
class CompareConfig:
    """Depth studies side by side."""

    studies: list[str] = field(default_factory=lambda: ["results/depth-converged", "results/depth-converged-seed1"])
    """Study folders written by scripts/depth_study.py."""
    out: str = "results/depth-compare"
    """Where summary.md and params_vs_error.png go."""
    size: int = 16
    """The training size (error on held-out episodes of it)."""
    other_size: int = 32
    """A never-seen size also reported (0: none)."""
    own_rates: bool = False
    """Let each model keep the learning rate that trained it best: settings that differ only in their
    rate count as one, and where one seed, model and step count was trained at several rates, only the
    run with the lowest final validation error is kept (chosen on validation, never on the scored
    windows; its study's name says which run it is)."""


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def study_setting(folder: Path) -> tuple[int, str]:
    """The study's seed and its training setting (world, budget, batch, ...) from its summary's title."""
    title = (folder / "summary.md").read_text().splitlines()[0] if (folder / "summary.md").exists() else ""
    found = re.search(r"^# Depth study: (.*), seed (\d+)\)$", title)
    if not found:
        raise SystemExit(f"{folder}: its summary.md has no study title; run its summary stage (--stages summary)")
    return int(found.group(2)), found.group(1)


def one_step(strata: list[dict], model: str, size: int, depth: int) -> float | None:
    """One-step error over every window of the strata (up to 3,000, the same for each model and depth)."""
    from loopwm.eval.adaptive import strata_error

    pooled = strata_error(strata, model, size, depth)
    return pooled[0] if pooled else None


def collect(cfg: CompareConfig) -> list[dict]:
    """One row per (study, model): its training, its best-depth errors and its errors by difficulty."""
    rows = []
    for name in cfg.studies:
        folder = Path(name)
        seed, setting = study_setting(folder)
        runs = {r["model"]: r for r in _read(folder / "runs.jsonl")}
        results, strata = _read(folder / "results.jsonl"), _read(folder / "strata.jsonl")
        long = {r["model"]: r for r in _read(folder / "long.jsonl") if r["size"] == cfg.size}
        for model, run in runs.items():
            mine = [r for r in results if r["model"] == model and r["size"] == cfg.size]
            if not mine:
                continue
            best = best_depth_row(mine, strata)
            other = [r for r in results if r["model"] == model and r["size"] == cfg.other_size]
            other_best = best_depth_row(other, strata)
            if other_best:
                other_best = {**other_best, "h1s": one_step(strata, model, cfg.other_size, other_best["depth"])}
            by_sweeps = {s["sweeps"]: (s["error_h1"], s["windows"]) for s in strata
                         if s["model"] == model and s["size"] == cfg.size and s["depth"] == best["depth"]}
            hard = [v for k, v in by_sweeps.items() if k not in ("0", "1")]  # steps of 2+ solver sweeps
            rows.append({"study": folder.name, "seed": seed, "setting": setting, "model": model, "params": best["params"],
                         "val": run["val_curve"][-1][1] if run.get("val_curve") else None,
                         "core_params": run.get("core_params"), "steps": run["steps"], "stop": run.get("stop_reason", "steps"),
                         "minutes": run["train_seconds"] / 60, "depth": best["depth"], "h1": best["h1"], "h10": best["h10"],
                         "h1s": one_step(strata, model, cfg.size, best["depth"]),
                         "long": long.get(model), "h1l": long[model]["h1"] if model in long else None,
                         "h10l": long[model]["h10"] if model in long else None,
                         "other": other_best, "free": by_sweeps["0"][0] if "0" in by_sweeps else None,
                         "hard": sum(e * n for e, n in hard) / sum(n for _, n in hard) if hard else None})
    return own_rates(rows) if cfg.own_rates else rows


RATE = re.compile(r", lr [0-9.e+-]+")


def own_rates(rows: list[dict]) -> list[dict]:
    """The rows with the rate taken out of each setting, and of the runs of one seed, model, step count and
    setting at several rates only the one with the lowest final validation error (CompareConfig.own_rates)."""
    def val(r: dict) -> float:  # a run without a validation curve is never preferred
        return float("inf") if r.get("val") is None else r["val"]

    kept: dict[tuple, dict] = {}
    for r in rows:
        r = {**r, "setting": RATE.sub("", r["setting"])}
        key = (r["seed"], r["model"], r["steps"], r["setting"])
        if key not in kept or val(r) < val(kept[key]):
            kept[key] = r
    return list(kept.values())


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


MATCH = 0.01  # a stack "matches" a loop when its error is at most 1% above the loop's


def shape(model: str) -> tuple[bool, bool]:
    """What a loop and a stack must share to be compared: full or local attention, lean or not."""
    return model.endswith("-full"), "-lean" in model


def paired(candidate: dict, target: dict, key: str) -> str:
    """For the long stage's errors (h1l, h10l): the candidate's gap to the target on the same windows,
    with two paired standard errors, e.g. ' [+1.8% ± 1.1%]' (empty for other keys or other windows).
    It says whether a match or a miss by MATCH is measured or inside the noise."""
    from loopwm.eval.openloop import paired_gap

    a, b = candidate.get("long"), target.get("long")
    if key not in ("h1l", "h10l") or not a or not b or (a["episodes"], a["windows"]) != (b["episodes"], b["windows"]):
        return ""
    window_key = "window_h1" if key == "h1l" else "window_h10"
    gap, se = paired_gap(a[window_key], b[window_key])
    return f" [{gap:+.1%} ± {2 * se:.1%}]"


def matching_ratio(rows: list[dict], target: dict, key: str) -> str:
    """The smallest model of the other family (stacks for a loop, loops for a stack), of the target's seed,
    setting and attention, within MATCH of the target's error, as a parameter ratio: the larger over the
    smaller, so a loop matched by a stack of 3x its size reads 3.0x, and so does a stack matched by a loop
    of a third of its size. With the long stage's errors each answer carries the paired gap (`paired`):
    of the match, or, where none matches, of the closest candidate."""
    other = "deep-" if target["model"].startswith("looped") else "looped"
    candidates = sorted((r for r in rows if (r["seed"], r["setting"]) == (target["seed"], target["setting"])
                         and r["model"].startswith(other) and shape(r["model"]) == shape(target["model"])),
                        key=lambda r: r["params"])
    kind = "stack" if other == "deep-" else "loop"
    for c in candidates:
        if c[key] is not None and target[key] is not None and c[key] <= (1 + MATCH) * target[key]:
            ratio = max(c["params"], target["params"]) / min(c["params"], target["params"])
            fewer = "" if other == "deep-" else (" fewer" if c["params"] < target["params"] else " more")
            return f"{c['model']} ({ratio:.1f}x{fewer}){paired(c, target, key)}"
    if not candidates:
        return f"no {kind}"
    edge = candidates[-1] if other == "deep-" else candidates[0]
    text = f"none of {len(candidates)} ({'largest' if other == 'deep-' else 'smallest'} {edge['params'] / target['params']:.2f}x)"
    scored = [c for c in candidates if c[key] is not None]
    closest = min(scored, key=lambda c: c[key]) if scored and target[key] is not None else None
    gap = paired(closest, target, key) if closest else ""
    return text + (f"; closest {closest['model']}{gap}" if gap else "")


LONG_NOTE = ("Long h1 and h10: over up to 3,000 windows; in brackets the named model's gap to the row's model on the "
             "same windows, ± two paired standard errors (a gap inside them is not measured).")
LABELS = {"h1s": "one-step error (all windows)", "h1": "h1 error (512 windows)",
          "h10l": "h10 error (up to 3,000 windows)", "h10": "h10 error (512 windows)"}


def plotted_keys(rows: list[dict]) -> list[str]:
    """The errors the plot shows: over the most windows that every row has (else the 512-window ones)."""
    return [("h1s" if all(r.get("h1s") is not None for r in rows) else "h1"),
            ("h10l" if all(r.get("h10l") is not None for r in rows) else "h10")]


def _long(r: dict) -> str:
    return f"{r['h1l']:.4f} / {r['h10l']:.4f} ({r['long']['windows']:,})" if r.get("long") else ""


def _long_match(rows: list[dict], r: dict) -> str:
    """The matching columns of the long stage's h1 and h10 (empty where it did not run)."""
    if not r.get("long"):
        return " | | | | "
    return "".join(f" | {r[key]:.4f} | {matching_ratio(rows, r, key)}" for key in ("h1l", "h10l"))


def write_summary(cfg: CompareConfig, rows: list[dict]) -> str:
    lines = [f"# Depth studies compared ({', '.join(cfg.studies)})", "",
             f"Error on held-out episodes of {cfg.size} discs, looped models at their best test depth (by the "
             "one-step error over all windows); h1 (all): that error, over up to 3,000 windows, the same for every "
             "model; h1 and h10: open loop over 512 windows; long h1 / h10: open loop over up to 3,000 windows "
             "(the study's long stage, where it ran); "
             "core = the shared block and its injection, or the distinct blocks; free flight and steps of 2+ sweeps: "
             "one-step error on those steps (the latter averaged over their windows).", "",
             "| study | seed | model | params (core) | steps | stopped | train min | depth | h1 (all) | h1 | h10 | long h1 / h10 | "
             f"free flight | steps of 2+ sweeps | {cfg.other_size} discs h1 (all) / h1 / h10 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["seed"], r["params"], r["model"])):
        core = f" ({r['core_params']:,})" if r["core_params"] else ""
        hard = f"{r['hard']:.4f}" if r["hard"] is not None else ""
        other = (_fmt(r["other"]["h1s"]) + f" / {r['other']['h1']:.4f} / {r['other']['h10']:.4f}") if r["other"] else ""
        free = f"{r['free']:.4f}" if r["free"] is not None else ""
        lines.append(f"| {r['study']} | {r['seed']} | {r['model']} | {r['params']:,}{core} | {r['steps']} | {r['stop']} | "
                     f"{r['minutes']:.1f} | {r['depth']} | {_fmt(r['h1s'])} | {r['h1']:.4f} | {r['h10']:.4f} | {_long(r)} | "
                     f"{free} | {hard} | {other} |")
    settings = sorted({r["setting"] for r in rows})

    def budget(r: dict) -> str:  # its steps, and with several settings the setting's number
        return f"{r['steps']}" + (f" ({settings.index(r['setting']) + 1})" if len(settings) > 1 else "")

    lines += ["", "Settings: " + "; ".join(f"({i + 1}) {t})" for i, t in enumerate(settings)) + "."] if len(settings) > 1 else \
             ["", f"Setting of every study: {settings[0]})."]
    lines += ["", f"## The smallest stack (same seed and setting) within {MATCH:.0%} of each loop's error", "",
              LONG_NOTE, "",
              f"| seed | steps{' (setting)' if len(settings) > 1 else ''} | loop | params | h1 (all) | matched by | h1 | matched by | h10 | matched by | long h1 | matched by "
              "| long h10 | matched by |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for loop in sorted((r for r in rows if r["model"].startswith("looped")), key=lambda r: (r["seed"], r["steps"], r["setting"], r["model"])):
        steady = (f"{_fmt(loop['h1s'])} | {matching_ratio(rows, loop, 'h1s')}" if loop["h1s"] is not None else " | ")
        lines.append(f"| {loop['seed']} | {budget(loop)} | {loop['model']} | {loop['params']:,} | {steady} | {loop['h1']:.4f} | {matching_ratio(rows, loop, 'h1')} | "
                     f"{loop['h10']:.4f} | {matching_ratio(rows, loop, 'h10')}{_long_match(rows, loop)} |")
    stacks = [r for r in rows if r["model"].startswith("deep-")]
    if any(r["model"].startswith("looped") for r in rows) and stacks:
        lines += ["", f"## The smallest loop (same seed, setting and attention) within {MATCH:.0%} of each stack's error", "",
                  "Loops of several widths (looped-dN) make this the loop's own parameter curve: the ratio is the stack's "
                  "parameters over the matching loop's. " + LONG_NOTE, "",
                  f"| seed | steps{' (setting)' if len(settings) > 1 else ''} | stack | params | h1 (all) | matched by | h1 | matched by | h10 | matched by | long h1 | "
                  "matched by | long h10 | matched by |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for stack in sorted(stacks, key=lambda r: (r["seed"], r["steps"], r["setting"], r["params"], r["model"])):
            steady = (f"{_fmt(stack['h1s'])} | {matching_ratio(rows, stack, 'h1s')}" if stack["h1s"] is not None else " | ")
            lines.append(f"| {stack['seed']} | {budget(stack)} | {stack['model']} | {stack['params']:,} | {steady} | {stack['h1']:.4f} | "
                         f"{matching_ratio(rows, stack, 'h1')} | {stack['h10']:.4f} | {matching_ratio(rows, stack, 'h10')}"
                         f"{_long_match(rows, stack)} |")
    lines += training_variants(rows, settings)
    return "\n".join(lines) + "\n"


def training_variants(rows: list[dict], settings: list[str]) -> list[str]:
    """The same model, seed and steps trained under other settings (a longer horizon, a curriculum, ...),
    each against the setting most of the studies share (or, in a group without it, the group's most common
    one), on the same windows."""
    if len(settings) < 2:
        return []
    count = Counter(r["setting"] for r in rows)
    usual = count.most_common(1)[0][0]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["seed"], r["model"], r["steps"]), []).append(r)
    lines = []
    for (seed, model, steps), group in sorted(groups.items()):
        if len(group) < 2:
            continue
        base = max(group, key=lambda r: (r["setting"] == usual, count[r["setting"]], -settings.index(r["setting"])))
        for r in sorted(group, key=lambda r: (r is not base, settings.index(r["setting"]))):
            against = (" (the usual)" if r["setting"] == usual else " (reference)") if r is base else ""
            gaps = ["", ""] if r is base else [paired(r, base, key) for key in ("h1l", "h10l")]  # "" without long rows
            long = f"{r['h1l']:.4f}{gaps[0]} | {r['h10l']:.4f}{gaps[1]}" if r.get("long") else " | "
            lines.append(f"| {seed} | {model} | {steps} | ({settings.index(r['setting']) + 1}){against} | {r['minutes']:.1f} | "
                         f"{_fmt(r['h1s'])} | {long} |")
    if not lines:
        return []
    return ["", f"## Training settings against the usual one ({settings.index(usual) + 1}): the same model, seed and steps", "",
            "Gaps are to the row marked as the reference, on the same windows (+: worse), ± two paired standard errors: the "
            "usual setting's model, or where a group has none, the model of its most common setting.", "",
            "| seed | model | steps | setting | train min | h1 (all) | long h1 | long h10 |", "|---|---|---|---|---|---|---|---|",
            *lines]


def _curves(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped into parameter curves: (family, attention and scaffold, seed, training setting) -> the
    rows (a model trained longer in another study is another curve, not a point on this one)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        family = "looped" if r["model"].startswith("looped") else "deep"
        groups.setdefault((family, shape(r["model"]), r["seed"], r["setting"]), []).append(r)
    return groups


def plot(cfg: CompareConfig, rows: list[dict], path: Path) -> None:
    """Error against parameters, one row of panels per training setting (budgets are not mixed on one axis),
    h1 and h10 side by side; settings are numbered as in the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    settings = sorted({r["setting"] for r in rows})
    fig, axes = plt.subplots(len(settings), 2, figsize=(13.5, 4.5 * len(settings)), squeeze=False)
    markers = "osD^v<>"
    palette = plt.get_cmap("tab20").colors  # 20 distinct colours: studies often hold more than 10 models
    colours = {m: palette[i % len(palette)] for i, m in enumerate(sorted({r["model"] for r in rows}))}  # one per model, every panel
    for i, setting in enumerate(settings):
        mine = [r for r in rows if r["setting"] == setting]
        for ax, key in zip(axes[i], plotted_keys(rows)):
            for model in sorted({r["model"] for r in mine}):
                pts = [r for r in mine if r["model"] == model]
                for r in pts:
                    ax.scatter(r["params"], r[key], marker=markers[r["seed"] % len(markers)], color=colours[model],
                               label=model if r is pts[0] else None)
                    # a model run in several studies of one seed and setting (another rule) names its study
                    twins = sum(q["seed"] == r["seed"] for q in pts) > 1
                    if twins or r is pts[0]:
                        text = f"{model} ({Path(r['study']).name})" if twins else model
                        ax.annotate(text, (r["params"], r[key]), fontsize=7, xytext=(4, 2), textcoords="offset points")
            # each family's parameter curve (loops of several widths, stacks of several depths), per seed and shape
            for (family, *_), pts in sorted(_curves(mine).items()):
                pts = sorted((r["params"], r[key]) for r in pts if r[key] is not None)
                if len(pts) > 1:
                    ax.plot(*zip(*pts), linestyle="-" if family == "looped" else "--", color="grey", linewidth=0.8, zorder=0)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlapped
            ax.set_xlabel("parameters")
            ax.set_ylabel(f"{LABELS[key]}, {cfg.size} discs")
            where = f"setting ({i + 1}), " if len(settings) > 1 else ""
            ax.set_title(f"{key.rstrip('sl')}, {where}marker: seed; lines: loops solid, stacks dashed", fontsize=10)
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right")  # outside the panels: it hid points
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(cfg: CompareConfig) -> None:
    rows = collect(cfg)
    if not rows:
        raise SystemExit(f"no scored models in {cfg.studies}: run scripts/depth_study.py on them first")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    text = write_summary(cfg, rows)
    atomic_write_text(out / "summary.md", text)
    plot(cfg, rows, out / "params_vs_error.png")
    print(text)


if __name__ == "__main__":
    main(tyro.cli(CompareConfig))
