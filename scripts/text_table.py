"""Our text models per task type beside the paper's table (its Table 2: LoopWM and Claude Opus).

Reads the JSON that `loopwm text eval RUN --json` writes (one per model, all on the same test
starts) and prints one markdown table in the paper's layout: EM per task type and overall, then
the overall token F1, BLEU-4 and entity F1, with the baselines from the first file beside them.

    python scripts/text_table.py --runs "state only=results/text-v6-numbers-state/eval-looped-5actions.json" \
        "trend hint + follow=results/text-v8-numbers-state-hints-trend-follow/eval-looped-5actions.json" \
        --hinted "trend hint + follow" --out results/text-paper-table/table.md

The paper's figures are on its own data set (about 500 test samples, never released), so its
columns are read beside ours, not against them; a model marked with --hinted reads a baseline's
reply and is labelled so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from loopwm.text.evaluate import check_comparable
from loopwm.text.tasks import TYPES
from loopwm.utils import LoopWMError, atomic_write_text

# The paper's Table 2 (ScienceWorld, 5 actions): EM, token F1, BLEU-4, entity per task type, in
# percent (../shared/reference/paper-notes.md, section 7.2). LifeStages and Lifespan rest on about two
# samples each there.
PAPER = {
    "LoopWM (paper, ~1B)": {
        "Boil": (66.7, 79.0, 75.3, 77.5), "Chemistry": (44.4, 64.4, 54.2, 57.9), "Conductivity": (87.0, 89.0, 87.8, 87.9),
        "Find": (76.9, 90.4, 82.7, 85.8), "Freeze": (25.0, 59.7, 31.2, 54.8), "Genetics": (78.3, 80.2, 78.9, 79.8),
        "Grow": (73.8, 80.0, 75.5, 79.8), "Incline": (59.3, 95.3, 90.4, 93.4), "LifeStages": (0.0, 18.3, 6.1, 10.2),
        "Lifespan": (100.0, 100.0, 100.0, 100.0), "Melt": (73.0, 91.9, 85.7, 91.6), "Power": (57.1, 63.9, 60.8, 61.5),
        "StateChange": (80.0, 83.1, 80.0, 80.0), "Thermometer": (83.3, 85.3, 83.3, 83.3), "overall": (68.4, 85.3, 80.7, 83.9)},
    "Claude Opus (paper, prompted)": {
        "Boil": (22.2, 33.3, 30.2, 32.3), "Chemistry": (44.4, 59.8, 46.3, 59.2), "Conductivity": (47.8, 67.2, 53.1, 72.7),
        "Find": (69.2, 83.8, 78.9, 84.6), "Freeze": (12.5, 33.6, 21.6, 37.3), "Genetics": (59.2, 71.8, 65.7, 71.6),
        "Grow": (70.8, 81.6, 76.1, 80.7), "Incline": (34.0, 86.5, 76.2, 83.8), "LifeStages": (0.0, 10.6, 6.0, 6.0),
        "Lifespan": (0.0, 61.4, 0.0, 58.3), "Melt": (36.5, 52.4, 46.3, 53.4), "Power": (42.9, 47.3, 45.3, 45.8),
        "StateChange": (40.0, 65.5, 44.6, 73.3), "Thermometer": (83.3, 98.1, 93.5, 97.2), "overall": (47.2, 72.8, 64.4, 72.3)},
}
METRICS = ("em", "f1", "bleu4", "entity")


@dataclass
class TextTableConfig:
    """Per-type EM of text models beside the paper's Table 2."""

    runs: list[str] = field(default_factory=list)
    """LABEL=PATH pairs, PATH a `loopwm text eval --json` file (a model's column) or a `loopwm text
    baselines --json` file (only its baselines are read); every file must score the same test starts."""
    hinted: list[str] = field(default_factory=list)
    """Labels of models that read a baseline's reply (--model.hints trend): marked in the table."""
    baselines: list[str] = field(default_factory=lambda: ["trend", "recall", "lookup"])
    """Baselines to show (copy, lookup, recall, trend), each read from the first file that has it (older
    evaluations lack recall and trend; `loopwm text baselines DATA --json` gives all four)."""
    paper: bool = True
    """Show the paper's LoopWM and Claude Opus columns."""
    out: str = ""
    """Markdown file to write as well as printing (empty: print only)."""


def load_result(spec: str, flag: str = "runs") -> tuple[str, dict]:
    """KEY=PATH (the value of --`flag`) -> (KEY, the `loopwm text eval --json` result at PATH)."""
    if "=" not in spec:
        raise LoopWMError(f"--{flag} takes KEY=PATH pairs, got {spec!r}: e.g. 'looped=results/x/eval-looped-5actions.json'")
    label, path = spec.split("=", 1)
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise LoopWMError(f"cannot read {path!r} ({e}): give the JSON that `loopwm text eval RUN --json` writes") from None
    if "per_task" not in result or "overall" not in result:
        raise LoopWMError(f"{path!r} is not a `loopwm text eval --json` result (no per_task/overall): re-run text eval with --json")
    return label.strip(), result


def table(results: dict[str, dict], hinted: list[str], baselines: list[str], paper: bool) -> str:
    """The markdown table: one row per task type and overall, EM; then F1/BLEU-4/entity overall."""
    first = next(iter(results.values()))
    check_comparable(results)
    found = {}
    for b in baselines:
        source = next((r for r in results.values() if b in r.get("baselines", {})), None)
        if source is None:
            raise LoopWMError(f"no file has the baseline {b!r}: add a newer `text eval --json` result or the output of "
                              "`loopwm text baselines DATA --json` to --runs, or leave it out of --baselines")
        found[b] = source["baselines"][b]
    # sample counts per type, from a model's result, or a baseline's where only baselines were given
    per_task = next((r["per_task"] for r in results.values() if "per_task" in r), None) or next(iter(found.values()))["per_task"]
    counts = {"overall": first["n_samples"]} | {t: v["n"] for t, v in per_task.items()}
    columns = [(f"*{name}*", {t: dict(zip(METRICS, v)) for t, v in rows.items()}) for name, rows in PAPER.items()] if paper else []
    columns += [(label + (" (reads the trend's reply)" if label in hinted else ""),
                 {**r["per_task"], "overall": r["overall"]}) for label, r in results.items() if "params" in r]
    columns += [(b + " (baseline)", {**v["per_task"], "overall": v["overall"]}) for b, v in found.items()]
    types = [t for t in TYPES if t in counts] + [t for t in counts if t not in TYPES and t != "overall"]

    def cell(rows: dict, task: str, metric: str) -> str:
        v = rows.get(task, {}).get(metric, float("nan"))
        return "-" if v is None or math.isnan(v) else f"{v:.1f}"

    head = "| EM, 5 actions | n (ours) | " + " | ".join(name for name, _ in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for task in types + ["overall"]:
        name = "**overall**" if task == "overall" else task
        lines.append(f"| {name} | {counts.get(task, 0)} | " + " | ".join(cell(rows, task, "em") for _, rows in columns) + " |")
    for metric, word in (("f1", "token F1"), ("bleu4", "BLEU-4"), ("entity", "entity F1")):
        lines.append(f"| overall {word} | | " + " | ".join(cell(rows, "overall", metric) for _, rows in columns) + " |")
    return "\n".join(lines) + "\n"


def main(cfg: TextTableConfig) -> str:
    if not cfg.runs:
        raise LoopWMError("give at least one --runs LABEL=PATH (a `loopwm text eval --json` file)")
    results = dict(load_result(s) for s in cfg.runs)
    unknown = [h for h in cfg.hinted if h not in results]
    if unknown:
        raise LoopWMError(f"--hinted {unknown} names no label of --runs ({sorted(results)})")
    text = table(results, cfg.hinted, cfg.baselines, cfg.paper)
    print(text)
    if cfg.out:
        atomic_write_text(Path(cfg.out), text)
    return text


if __name__ == "__main__":
    try:
        main(tyro.cli(TextTableConfig))
    except LoopWMError as e:
        raise SystemExit(f"error: {e}") from None
