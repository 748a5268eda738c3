"""Two text world models on the same test starts, paired: exact match of each and the difference with
its standard error, overall, per task type and on the rows that need the world's state.

    loopwm text eval RUN_A --actions 5 --state-starts 0 --predictions A.jsonl
    loopwm text eval RUN_B --actions 5 --state-starts 0 --predictions B.jsonl
    python scripts/text_paired.py A.jsonl B.jsonl            # markdown table on stdout
    python scripts/text_paired.py --against trend B.jsonl    # a baseline (A) against the model in B.jsonl

Both files must hold the same start points (the same data, split, --max-starts and --seed), which is
checked. The standard error of a paired difference of exact matches counts the starts where the
two models disagree, so it is far smaller than that of two independent samples.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from loopwm.text.corpus import STATE_ROWS, has_number, reply_row
from loopwm.text.metrics import exact_match


def read(path: str) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        sys.exit(f"{path}: not a predictions file from `loopwm text eval --predictions` ({err})")


def groups(rows: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(rows):
        out["overall"].append(j)
        out[r["type"]].append(j)
        if has_number(r["reference"]):
            out["numbers"].append(j)
        row = reply_row(r["actions"][-1], r["reference"])  # text eval's rows
        if row is not None:
            out[row].append(j)
    return out


def paired(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Mean of b - a in percentage points and its standard error."""
    d = [float(y) - float(x) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    return 100 * mean, 100 * math.sqrt(var / n)


def baseline_rows(rows: list[dict], name: str, path: str) -> list[dict]:
    """The rows with a baseline's reply (written beside the model's by `text eval --predictions`) as the prediction."""
    try:
        return [{**r, "prediction": r["baselines"][name]} for r in rows]
    except KeyError:
        names = sorted(rows[0].get("baselines", {})) if rows else []
        sys.exit(f"{path} holds no {name!r} baseline replies ({', '.join(names) or 'none: re-run text eval --predictions'})")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--against":
        b = read(argv[2])
        a = baseline_rows(b, argv[1], argv[2])
    elif len(argv) == 2:
        a, b = read(argv[0]), read(argv[1])
    else:
        sys.exit("usage: python scripts/text_paired.py A.jsonl B.jsonl, or --against BASELINE B.jsonl")
    key = [(r["task"], r["variation"], r["t"]) for r in a]
    if key != [(r["task"], r["variation"], r["t"]) for r in b] or any(x["reference"] != y["reference"] for x, y in zip(a, b)):
        sys.exit("the two files hold different start points or references: score both runs on the same data, split and seed")
    hit_a = [exact_match(r["prediction"], r["reference"]) for r in a]
    hit_b = [exact_match(r["prediction"], r["reference"]) for r in b]
    print("| rows | n | EM A | EM B | B - A (paired SE) |\n|---|---|---|---|---|")
    for name, idx in sorted(groups(a).items(), key=lambda g: (g[0] != "overall", g[0] not in ("numbers", *STATE_ROWS), g[0])):
        ea = 100 * sum(hit_a[j] for j in idx) / len(idx)
        eb = 100 * sum(hit_b[j] for j in idx) / len(idx)
        diff, se = paired([hit_a[j] for j in idx], [hit_b[j] for j in idx])
        print(f"| {name} | {len(idx)} | {ea:.1f} | {eb:.1f} | {diff:+.1f} ({se:.1f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
