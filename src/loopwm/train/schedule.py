"""The schedules training follows: the learning rate (warm-up, cosine decay, the cool-down after a
plateau), the rule that says a validation curve has stopped improving, and the horizon curriculum.
The text models train by the same schedule (loopwm.text.train)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the loop imports this module
    from loopwm.train.loop import TrainConfig


def lr_at(cfg: TrainConfig, step: int, fraction: float) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak over `fraction` in [0, 1] (with
    --until-plateau: the peak until the cool-down, whose progress `fraction` then is)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction))))


def plateaued(curve: list[tuple[int, float]], tolerance: float, window: float = 0.2, min_points: int = 5,
              smooth: int = 3, min_recent: int | None = None) -> bool:
    """Whether a validation curve [(step, loss), ...] has stopped improving: the best loss of its last
    `window` (by steps) is not `tolerance` (a fraction) better than the best before it.

    The losses are first smoothed by a running mean over `smooth` evaluations: at a constant
    learning rate a model's validation loss jumps by several percent between evaluations, and
    the raw rule then stopped runs that were still improving (a 4-block stack at 2,100 of 12,000
    steps on the rail, docs/LOG.md). The last window must also hold at least `min_recent`
    evaluations (default: the smoothing span plus one), so that one spike cannot decide: early in
    training the last fifth holds only two or three of them, and a single bad evaluation there
    cooled a looped model down at 2,160 of 9,600 steps while it was still improving."""
    if len(curve) < min_points:
        return False
    min_recent = smooth + 1 if min_recent is None else min_recent
    losses = [v for _, v in curve]
    curve = [(s, float(np.mean(losses[max(0, i - smooth + 1): i + 1]))) for i, (s, _) in enumerate(curve)]
    last = curve[-1][0]
    recent = [v for s, v in curve if s > (1 - window) * last]
    before = [v for s, v in curve if s <= (1 - window) * last]
    if len(recent) < min_recent or not before:
        return False
    return min(recent) > (1 - tolerance) * min(before)


def cooldown_length(cfg: TrainConfig, start: int) -> int:
    return max(1, int(round(cfg.plateau_window * start)))


def plateau_phase(cfg, step: int, cooldown_from: int | None, stop_reason: str) -> tuple[int | None, str, float | None]:
    """Where a --until-plateau run is at `step`: (cooldown_from, stop_reason, fraction of the cool-down
    done, None once it has run its length and training stops). A run that never plateaued starts
    cooling at 1 / (1 + plateau_window) of the cap, so as to end cooled at the cap. `cfg` needs
    `steps` and `plateau_window` (the physics and the text training configs both have them)."""
    if cooldown_from is None and step >= cfg.steps / (1 + cfg.plateau_window):
        cooldown_from, stop_reason = step, "cap"
    if cooldown_from is None:
        return None, stop_reason, 0.0
    length = cooldown_length(cfg, cooldown_from)
    return cooldown_from, stop_reason, None if step >= cooldown_from + length else (step - cooldown_from) / length


def horizon_now(cfg: TrainConfig, fraction: float) -> int:
    """The imagined steps of this step's windows under the horizon curriculum (--horizon-start)."""
    if cfg.horizon_start <= 0 or fraction >= 1.0 - cfg.horizon_final:
        return cfg.horizon
    return cfg.horizon_start
