"""The text benchmark's two plots, drawn from `loopwm text eval --json` results only (no model is run).

- metrics_vs_actions.png: EM, token F1, BLEU-4 and entity F1 against the number of actions fed before
  decoding (Step 1..5), one line per model, with the baselines of the first file;
- em_vs_iterations.png: EM against test-time loop iterations per action, overall and on the `look
  around` replies among the test starts, from one result per depth.

    loopwm text eval RUN --actions 1 2 3 4 5 --out A.json            # each model's Step 1..5
    loopwm text eval RUN --actions 5 --depth 1 --out D1.json          # one file per test-time depth
    python scripts/text_plots.py --runs "looped=A.json" "deep=B.json" --depths 1=D1.json 2=D2.json \
        4=D4.json 8=D8.json --out results/text-plots

Every file must score the same test starts of one collection (the same number of samples and, where
the files record it, the same data fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from loopwm.text.evaluate import check_comparable
from loopwm.utils import LoopWMError


@dataclass
class TextPlotsConfig:
    """Step 1..5 and test-time depth plots of text world models, from their evaluation files."""

    runs: list[str] = field(default_factory=list)
    """LABEL=PATH pairs: `loopwm text eval --json` results with several numbers of actions (--actions 1 2 3 4 5)."""
    depths: list[str] = field(default_factory=list)
    """DEPTH=PATH pairs: one model's results at each test-time loop count (--depth N); empty: no depth plot."""
    out: str = "results/text-plots"
    """Folder the two PNGs are written to."""


def _read(spec: str, flag: str) -> tuple[str, dict]:
    from text_table import load_result  # a sibling script

    key, result = load_result(spec, flag)
    if "by_actions" not in result:
        raise LoopWMError(f"{spec!r} is not a `loopwm text eval --json` result (no by_actions): re-run text eval")
    return key, result


def main(cfg: TextPlotsConfig) -> list[Path]:
    from text_bench import plots  # a sibling script: the benchmark draws the same two plots

    if not cfg.runs:
        raise LoopWMError("give at least one --runs LABEL=PATH (a `loopwm text eval --json` file)")
    runs = dict(_read(s, "runs") for s in cfg.runs)
    sweep = dict(_read(s, "depths") for s in cfg.depths)
    for key in sweep:
        if not key.isdigit() or int(key) < 1:
            raise LoopWMError(f"--depths keys are loop counts (1, 2, 4, ...), got {key!r}")
    check_comparable({**runs, **{f"depth {k}": v for k, v in sweep.items()}})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    plots(runs, sweep, out)
    drawn = [out / "metrics_vs_actions.png"] + ([out / "em_vs_iterations.png"] if sweep else [])
    for path in drawn:
        print(path)
    return drawn


if __name__ == "__main__":
    try:
        main(tyro.cli(TextPlotsConfig))
    except LoopWMError as e:
        raise SystemExit(f"error: {e}") from None
