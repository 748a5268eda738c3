"""Imagined steps per second of each model, side by side in one process, at batch 1 (play, tracking)
and at planners' batches: the number that decides how fast a planner decides.

    python scripts/imagine_speed.py --runs results/plan/runs/pendulum --out results/imagine_speed   # ~2 minutes

Every run under --runs is timed (plus a GRU world model built from the RSSM run's spec, untrained:
speed does not depend on the weights), on one torch thread, rolling `horizon` imagined steps per
call, in rounds that visit the models in turn so that a busy machine slows them alike. The looped
model is timed at its evaluation depth on the fixed-depth path and on the general loop (the same
steps with an exit rule that never fires), so the fast path's saving is measured, not assumed.
With --compile, every transformer model is also timed with torch.compile'd blocks (a separate copy;
compile time is reported, not counted in the rate). Writes OUT/imagine_speed.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import tyro

from loopwm.utils import atomic_write_json


@dataclass
class ImagineSpeedConfig:
    """Imagined-step throughput of trained runs."""

    runs: str = "results/plan/runs/pendulum"
    """Folder whose subfolders are runs (trained on one dataset)."""
    out: str = "results/imagine_speed"
    """Folder for imagine_speed.json."""
    batches: list[int] = field(default_factory=lambda: [1, 16, 32, 128])
    """Batch sizes (candidates) to time."""
    horizon: int = 15
    """Imagined steps per call (a planner's horizon)."""
    rounds: int = 5
    """Rounds over all models; each round times every model once."""
    seconds: float = 0.5
    """Time per model and batch within a round."""
    compile: bool = False
    """Also time a torch.compile'd copy of every looped and deep model."""


def _models(root: Path, compile: bool) -> dict[str, tuple[torch.nn.Module, object]]:
    from loopwm.checkpoint import build_model, load_model
    from loopwm.models.blocks import compile_blocks
    from loopwm.models.exits import make_exit_rule

    models = {}
    for run in sorted(p for p in root.iterdir() if (p / "checkpoints").is_dir()):
        model, meta = load_model(run, "cpu")
        if meta["kind"] == "looped":
            models[f"{run.name} (fixed-depth path)"] = (model, None)
            models[f"{run.name} (general loop)"] = (model, make_exit_rule("delta", 0.0))
        else:
            models[run.name] = (model, None)
        if compile and meta["kind"] in ("looped", "deep"):
            compiled, _ = load_model(run, "cpu")
            compile_blocks(compiled)
            models[f"{run.name} (compiled blocks)"] = (compiled, None)
        if meta["kind"] == "rssm":
            gru = build_model({**meta, "model": {**meta["model"], "stoch": 0}}).eval()
            models["gru (untrained)"] = (gru, None)
    return models


def main(cfg: ImagineSpeedConfig) -> dict:
    torch.set_num_threads(1)
    models = _models(Path(cfg.runs), cfg.compile)
    steps = {(name, b): 0 for name in models for b in cfg.batches}
    spent = {(name, b): 0.0 for name in models for b in cfg.batches}
    warmup: dict[tuple[str, int], float] = {}
    with torch.no_grad():
        for _ in range(cfg.rounds):
            for name, (model, rule) in models.items():
                spec = model.spec
                for b in cfg.batches:
                    obs = torch.zeros(b, spec.n_entities, spec.n_features)
                    if spec.action_kind == "discrete":
                        act = torch.full((b, cfg.horizon), spec.action_start)
                    else:
                        act = torch.zeros(b, cfg.horizon, spec.action_dim)
                    state = model.initial(obs)
                    t0 = time.perf_counter()
                    model.imagine(state, act, exit_rule=rule)  # warm-up (compiles on the first visit)
                    warmup.setdefault((name, b), time.perf_counter() - t0)
                    start = time.perf_counter()
                    while time.perf_counter() - start < cfg.seconds:
                        model.imagine(state, act, exit_rule=rule)
                        steps[name, b] += b * cfg.horizon
                    spent[name, b] += time.perf_counter() - start
    rows = [{"model": name, "batch": b, "imagined_steps_per_second": steps[name, b] / spent[name, b],
             "ms_per_batched_step": 1000 * spent[name, b] / (steps[name, b] / b),
             "first_call_seconds": round(warmup[name, b], 3),
             "params": int(sum(p.numel() for p in models[name][0].parameters()))}
            for name in models for b in cfg.batches]
    for row in rows:
        print(json.dumps(row))
    result = {"runs": cfg.runs, "rows": rows, "config": asdict(cfg), "threads": 1}
    atomic_write_json(Path(cfg.out) / "imagine_speed.json", result)
    return result


if __name__ == "__main__":
    main(tyro.cli(ImagineSpeedConfig))
