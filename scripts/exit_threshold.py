"""Choose an exit rule's threshold without the scored windows, then read the scored result at it.

The depth study sweeps exit thresholds on the held-out windows it scores, so a threshold picked from
that sweep is picked on the test data. Here the same thresholds are swept on windows of the run's
*training* episodes (for a token-halt rule, after fitting the same seeded halting head), and the
rule below picks one before any held-out row is read: the largest threshold whose horizon-10 error
on those windows is within --tolerance of the fixed maximum depth on the same windows. The study's
own exits.jsonl row at that threshold is then the unbiased reading.

    python scripts/exit_threshold.py --studies results/depth-r005-local-n32-seed0-10k-halt ...
        --data-root DATA --rule token-halt-latent           # about 4 minutes a study on one core

A study's model is read from STUDY/runs/MODEL, else STUDY/model (the committed checkpoints).
Writes STUDY/threshold_choice-RULE.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tyro

from depth_study import datasets, exit_thresholds, fit_halting, study_settings
from loopwm.utils import atomic_write_text


@dataclass
class ThresholdConfig:
    """Pick an exit rule's threshold on training windows; read the held-out row at it."""

    studies: list[str] = field(default_factory=list)
    """Depth-study folders whose exits stage swept the rule."""
    data_root: str = ""
    """Dataset folder of the studies (empty: each study's own data_root)."""
    rule: str = "token-halt-latent"
    """The exit rule, as the depth study names it (token-halt-latent, token-halt-error: a head fitted
    first, its target in the name; token-delta, delta, accel: training-free)."""
    model: str = "looped-d32"
    """Model of the study."""
    windows: int = 512
    """Training-episode windows the thresholds are swept on."""
    tolerance: float = 0.01
    """Largest allowed gap to the fixed maximum on those windows (0.01: 1%, half the issue's 2% band)."""


def choose(rows: list[dict], tolerance: float) -> float | None:
    """The largest threshold whose h10 is within `tolerance` of the deepest fixed row's, or None."""
    top = max((r for r in rows if r["rule"] == "fixed"), key=lambda r: r["max_depth"])["error_h10"]
    ok = [r["threshold"] for r in rows if r["rule"] != "fixed" and r["error_h10"] <= (1 + tolerance) * top]
    return max(ok) if ok else None


def main(cfg: ThresholdConfig) -> None:
    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset
    from loopwm.eval.adaptive import exit_sweep
    from loopwm.eval.openloop import exit_rule_from
    from loopwm.models.exits import TokenHaltExit

    for folder in map(Path, cfg.studies):
        settings = study_settings(folder)
        if cfg.data_root:
            settings = replace(settings, data_root=cfg.data_root)
        run = folder / "runs" / cfg.model if (folder / "runs" / cfg.model).exists() else folder / "model"
        model, meta = load_model(run, "cpu")
        data = datasets(settings, [settings.n_bodies])[settings.n_bodies][0]  # the study's own dataset folder
        head = fit_halting(model, meta, str(data), settings, "cpu", cfg.rule) if cfg.rule.startswith("token-halt") else None
        ds = TrajectoryDataset.load(data)
        held = {int(i) for i in meta["val_episodes"]}
        train_eps = np.array([i for i in range(len(ds)) if i not in held])
        top = min(16, max(settings.test_depths))
        def make_rule(name, threshold, model, head=head):
            return TokenHaltExit(threshold, head=head) if head is not None else exit_rule_from(name, threshold, model)

        swept = exit_sweep(model, ds, train_eps, {cfg.rule: exit_thresholds(cfg.rule)}, [top], top,
                           context=settings.context, windows=cfg.windows, make_rule=make_rule)
        chosen = choose(swept, cfg.tolerance)
        scored = [r for r in map(json.loads, (folder / "exits.jsonl").read_text().splitlines())
                  if r["rule"] == cfg.rule and r.get("size") == settings.n_bodies and r["threshold"] == chosen]
        out = {"rule": cfg.rule, "tolerance": cfg.tolerance, "windows": cfg.windows, "chosen": chosen,
               "training_sweep": swept, "scored_row": scored[0] if scored else None}
        atomic_write_text(folder / f"threshold_choice-{cfg.rule}.json", json.dumps(out, indent=1))
        row = out["scored_row"] or {}
        print(f"{folder.name}: {cfg.rule} chose {chosen}; held out: M {row.get('mean_token_iterations')}, "
              f"vs round(M) {row.get('vs_round')}, vs max {row.get('vs_max')}", flush=True)


if __name__ == "__main__":
    main(tyro.cli(ThresholdConfig))
