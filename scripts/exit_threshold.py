"""Choose an exit rule's threshold without the windows it is judged on, then judge it there.

The depth study sweeps exit thresholds on the held-out windows it scores, so a threshold picked from
that sweep is picked on the test data. Two honest ways round it:

- `--choose-on training` (default): sweep the same thresholds on windows of the run's *training*
  episodes (for a token-halt rule, after fitting the same seeded halting head) and take the largest
  threshold whose horizon-10 error there is within --tolerance of the fixed maximum depth. The
  study's own exits.jsonl row at that threshold is then the unbiased reading.
- `--choose-on scored --test-data DIR`: treat the study's scored windows as a validation set. Among
  the thresholds within 2% of the fixed maximum there at no more than half its iterations, take the
  one with the largest lead over fixed round(M) in standard errors, then score it, with fixed
  depths 1-8 and the maximum, on a dataset of fresh episodes of the same world (another collection
  seed: no episode in common), which is the reading.

    python scripts/exit_threshold.py --studies results/depth-r005-local-n32-seed0-10k-halt ...
        --data-root DATA --rule token-halt-latent           # about 4 minutes a study on one core

A study's model is read from STUDY/runs/MODEL, else STUDY/model (the committed checkpoints).
Writes STUDY/threshold_choice-RULE.json (training) or STUDY/threshold_test-RULE-TESTDATA.json (scored,
named after the test dataset's folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tyro

from depth_study import datasets, exit_thresholds, fit_halting, study_settings
from loopwm.utils import LoopWMError, atomic_write_text


@dataclass
class ThresholdConfig:
    """Pick an exit rule's threshold where it is not judged; judge it on other windows."""

    studies: list[str] = field(default_factory=list)
    """Depth-study folders whose exits stage swept the rule."""
    data_root: str = ""
    """Dataset folder of the studies (empty: each study's own data_root)."""
    rule: str = "token-halt-latent"
    """The exit rule, as the depth study names it (token-halt-latent, token-halt-error: a head fitted
    first, its target in the name; token-delta, delta, accel: training-free)."""
    model: str = "looped-d32"
    """Model of the study."""
    choose_on: str = "training"
    """Where the threshold is chosen: "training" (windows of the training episodes; judged on the
    study's scored rows) or "scored" (the study's scored rows; judged on --test-data)."""
    windows: int = 512
    """Training-episode windows the thresholds are swept on (--choose-on training)."""
    tolerance: float = 0.01
    """Largest allowed gap to the fixed maximum on those windows (0.01: 1%, half the issue's 2% band)."""
    test_data: str = ""
    """With --choose-on scored: a dataset of fresh episodes of the study's world (collected with
    another seed, so no episode is shared with training or the scored windows)."""
    test_windows: int = 1024
    """Windows of --test-data the chosen threshold and the fixed depths are scored on."""


def choose(rows: list[dict], tolerance: float) -> float | None:
    """The largest threshold whose h10 is within `tolerance` of the deepest fixed row's, or None."""
    top = max((r for r in rows if r["rule"] == "fixed"), key=lambda r: r["max_depth"])["error_h10"]
    ok = [r["threshold"] for r in rows if r["rule"] != "fixed" and r["error_h10"] <= (1 + tolerance) * top]
    return max(ok) if ok else None


def choose_on_scored(rows: list[dict]) -> float | None:
    """Of the rule's rows within 2% of the fixed maximum at no more than half its iterations, the
    threshold whose lead over fixed round(M) is largest in standard errors; None if none qualifies."""
    ok = [r for r in rows if r["rule"] != "fixed" and r["vs_max"]["gap_h10"] <= 0.02
          and r["mean_token_iterations"] <= 0.5 * r["max_depth"]]
    if not ok:
        return None
    return min(ok, key=lambda r: r["vs_round"]["gap_h10"] / max(r["vs_round"]["se_h10"], 1e-12))["threshold"]


def main(cfg: ThresholdConfig) -> None:
    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset
    from loopwm.eval.adaptive import exit_sweep
    from loopwm.eval.openloop import exit_rule_from
    from loopwm.models.exits import TokenHaltExit

    if cfg.choose_on not in ("training", "scored"):
        raise LoopWMError(f"unknown --choose-on {cfg.choose_on!r}: use training or scored")
    if cfg.choose_on == "scored" and not cfg.test_data:
        raise LoopWMError("--choose-on scored picks on the study's scored windows, so it must be judged elsewhere: "
                          "give --test-data, a dataset of fresh episodes of the same world")
    for folder in map(Path, cfg.studies):
        settings = study_settings(folder)
        if cfg.data_root:
            settings = replace(settings, data_root=cfg.data_root)
        run = folder / "runs" / cfg.model if (folder / "runs" / cfg.model).exists() else folder / "model"
        model, meta = load_model(run, "cpu")
        data = datasets(settings, [settings.n_bodies])[settings.n_bodies][0]  # the study's own dataset folder
        top = min(16, max(settings.test_depths))
        scored_rows = [r for r in map(json.loads, (folder / "exits.jsonl").read_text().splitlines())
                       if r["rule"] == cfg.rule and r.get("size") == settings.n_bodies]
        ds = TrajectoryDataset.load(data)
        chosen, test = None, None
        if cfg.choose_on == "scored":  # checked and chosen before the head's fit, which takes a minute
            chosen = choose_on_scored(scored_rows)
            test = TrajectoryDataset.load(cfg.test_data)
            if (test.env_id, test.env_kwargs) != (ds.env_id, ds.env_kwargs):
                raise LoopWMError(f"--test-data {cfg.test_data} is not the study's world ({test.env_id} {test.env_kwargs}): "
                                  "collect fresh episodes with the study's settings and another --seed")
        needs_head = cfg.rule.startswith("token-halt") and (cfg.choose_on == "training" or chosen is not None)
        head = fit_halting(model, meta, str(data), settings, "cpu", cfg.rule) if needs_head else None

        def make_rule(name, threshold, model, head=head):
            return TokenHaltExit(threshold, head=head) if head is not None else exit_rule_from(name, threshold, model)

        if cfg.choose_on == "training":
            held = {int(i) for i in meta["val_episodes"]}
            train_eps = np.array([i for i in range(len(ds)) if i not in held])
            swept = exit_sweep(model, ds, train_eps, {cfg.rule: exit_thresholds(cfg.rule)}, [top], top,
                               context=settings.context, windows=cfg.windows, make_rule=make_rule)
            chosen = choose(swept, cfg.tolerance)
            scored = [r for r in scored_rows if r["threshold"] == chosen]
            out = {"rule": cfg.rule, "choose_on": "training", "tolerance": cfg.tolerance, "windows": cfg.windows,
                   "chosen": chosen, "training_sweep": swept, "scored_row": scored[0] if scored else None}
            name, row = f"threshold_choice-{cfg.rule}.json", out["scored_row"] or {}
        else:
            rules = {cfg.rule: [chosen]} if chosen is not None else {}
            swept = exit_sweep(model, test, np.arange(len(test)), rules, sorted({*range(1, 9), top}), top,
                               context=settings.context, windows=cfg.test_windows, make_rule=make_rule)
            tested = [r for r in swept if r["rule"] == cfg.rule]
            out = {"rule": cfg.rule, "choose_on": "scored", "chosen": chosen, "test_data": cfg.test_data,
                   "test_windows": cfg.test_windows, "test_row": tested[0] if tested else None, "test_sweep": swept}
            name, row = f"threshold_test-{cfg.rule}-{Path(cfg.test_data).name}.json", out["test_row"] or {}
        atomic_write_text(folder / name, json.dumps(out, indent=1))
        print(f"{folder.name}: {cfg.rule} chose {chosen} on {cfg.choose_on} windows; judged: "
              f"M {row.get('mean_token_iterations')}, vs round(M) {row.get('vs_round')}, "
              f"at equal cost {row.get('vs_equal_cost')}, vs max {row.get('vs_max')}, "
              f"rank corr {row.get('iterations_solver_spearman')}", flush=True)


if __name__ == "__main__":
    main(tyro.cli(ThresholdConfig))
