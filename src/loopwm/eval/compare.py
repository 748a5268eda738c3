"""`loopwm compare`: pair evaluations of several runs window by window.

Two models' mean errors, each with its own spread, hide gaps of a few percent: a hard window is hard
for both. Scored on the same windows, the per-window differences carry far less noise, so the gap
and its standard error (openloop.paired_gap) say whether one model is better, and by how much.
`loopwm eval RUN --per-window --out DIR` writes the record this command reads (DIR/eval.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from loopwm.eval.openloop import paired_gap
from loopwm.utils import LoopWMError, read_json

UNITS_TOLERANCE = 1e-4
"""Relative difference in the copy-last floor above which two evaluations measure error in different
units (their models normalise by different training data)."""


@dataclass
class CompareConfig:
    """Pair the evaluations of several runs on the same windows; the first is the reference."""

    evals: Annotated[tuple[str, ...], tyro.conf.Positional]
    """Evaluation records: eval.json files (or the folders holding them) written by `loopwm eval RUN
    --per-window --out DIR`, or its `--json` output saved to a file. The first is the reference."""
    horizons: tuple[int, ...] = ()
    """Horizons to compare; empty means every horizon the evaluations share."""
    json: bool = False
    """Print one JSON object on stdout instead of a table."""


def load_eval(path: str | Path) -> dict:
    """An evaluation record with per-window errors, or an error that says how to write one."""
    path = Path(path)
    if path.is_dir():
        path = path / "eval.json"
    record = read_json(path, "evaluation")
    if not isinstance(record, dict) or not isinstance(record.get("per_window"), dict):
        raise LoopWMError(f"{path} has no per-window errors: evaluate the run with "
                          "loopwm eval RUN --per-window --out DIR and compare DIR/eval.json")
    pw = record["per_window"]
    if not isinstance(pw.get("errors"), dict) or not isinstance(pw.get("windows"), list):
        raise LoopWMError(f"{path}: its per_window record lacks windows or errors; evaluate the run again with --per-window")
    record["_path"] = str(path)
    return record


def check_pairable(reference: dict, other: dict) -> None:
    """Refuse two evaluations that were not scored on the same windows, truth and units."""
    a, b = reference["per_window"], other["per_window"]
    fix = ("evaluate both on the same data with the same --context, --horizon and --max-windows "
           "(--data PATH scores a run on another dataset)")
    if a["windows"] != b["windows"]:
        raise LoopWMError(f"{other['_path']} was scored on other windows than {reference['_path']}: {fix}")
    if a.get("truth_sha256") != b.get("truth_sha256"):
        raise LoopWMError(f"{other['_path']} and {reference['_path']} scored the same window positions in different "
                          f"data (their true observations differ): {fix}")
    for h, floor in (reference.get("floors") or {}).get("copy_last", {}).items():
        theirs = (other.get("floors") or {}).get("copy_last", {}).get(h)
        if theirs is not None and abs(theirs - floor) > UNITS_TOLERANCE * max(abs(floor), 1e-12):
            raise LoopWMError(f"{other['_path']} and {reference['_path']} measure error in different units (the copy-last "
                              f"floor at horizon {h} reads {theirs:.6g} against {floor:.6g}): each model normalises by "
                              "its own training data's spread, so only runs trained on the same dataset compare")


def compare(cfg: CompareConfig) -> dict:
    """Each evaluation's mean error per horizon and its paired gap to the reference."""
    if len(cfg.evals) < 2:
        raise LoopWMError("compare needs at least two evaluations: the reference first, then the others")
    records = [load_eval(p) for p in cfg.evals]
    reference = records[0]
    for other in records[1:]:
        check_pairable(reference, other)
    shared = sorted((h for h in reference["per_window"]["errors"] if all(h in r["per_window"]["errors"] for r in records)),
                    key=int)
    horizons = [str(h) for h in cfg.horizons] if cfg.horizons else shared
    missing = [h for h in horizons if h not in shared]
    if missing:
        raise LoopWMError(f"horizon(s) {', '.join(missing)} are not in every evaluation; they share {', '.join(shared)}")
    rows = []
    for record in records:
        row = {"eval": record["_path"], "run": record.get("run"), "exit_rule": record.get("exit_rule"),
               "threshold": record.get("threshold"), "depth": record.get("depth"),
               "iterations_per_step": record.get("iterations_per_step"),
               "token_iterations_per_step": record.get("token_iterations_per_step"), "error": {}, "gap": {}, "gap_se": {}}
        for h in horizons:
            errors = record["per_window"]["errors"][h]
            row["error"][h] = sum(errors) / len(errors)
            if record is not reference:
                row["gap"][h], row["gap_se"][h] = paired_gap(errors, reference["per_window"]["errors"][h])
        rows.append(row)
    return {"windows": len(reference["per_window"]["windows"]), "horizons": [int(h) for h in horizons], "rows": rows}


def format_comparison(result: dict) -> str:
    """A table: one line per evaluation, the reference first; under it each other's gap."""
    hs = [str(h) for h in result["horizons"]]
    name_width = max(12, *(len(_label(r)) for r in result["rows"]))
    lines = [f"{'':{name_width}}  {'iter/step':>9}  {'per body':>8}  " + "  ".join(f"{'h' + h:>22}" for h in hs)]
    for i, row in enumerate(result["rows"]):
        its, per_body = row["iterations_per_step"], row["token_iterations_per_step"]
        cells = []
        for h in hs:
            text = f"{row['error'][h]:.4f}"
            if i:
                text += f" {100 * row['gap'][h]:+.1f}% ± {200 * row['gap_se'][h]:.1f}%"
            cells.append(f"{text:>22}")
        lines.append(f"{_label(row):{name_width}}  {'' if its is None else f'{its:9.2f}':>9}  "
                     f"{'' if per_body is None else f'{per_body:8.2f}':>8}  " + "  ".join(cells))
    lines.append(f"{result['windows']} windows; gaps are to the first row, positive = higher error, ± two paired "
                 "standard errors; iterations per step are the scene's (its longest-working body), per body their "
                 "mean over bodies (the cost of a per-body exit rule)")
    return "\n".join(lines)


def _label(row: dict) -> str:
    rule = row.get("exit_rule") or "fixed"
    how = f"depth {row.get('depth')}" if rule == "fixed" else f"{rule} {row.get('threshold') or 0:g}, at most {row.get('depth')}"
    path = Path(row["eval"])
    name = path.parent.name if path.name == "eval.json" else path.stem  # DIR/eval.json reads as DIR, a saved file by its name
    return f"{name or row['eval']} ({how})"
