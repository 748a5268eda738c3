"""The stability claim, measured: roll trained models open-loop for 100,000 steps with state carry.

    python scripts/long_rollout.py --out results/long_rollout.json          # the bench's balls models
    python scripts/long_rollout.py --runs runs/demo --steps 20000

For each run: the largest latent norm reached (root-mean-square over a state's entries, so models of
different widths compare), whether anything became NaN or infinite, the largest |observation|, the
fraction of steps with every body inside the box, and how lively the last 1,000 steps still are
(standard deviation of positions, against the real data's). Actions are smooth random pushes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from loopwm.checkpoint import load_model
from loopwm.data import TrajectoryDataset
from loopwm.utils import atomic_write_json


@dataclass
class LongRolloutConfig:
    """Roll models open-loop for many steps and report whether they stay bounded."""

    runs: tuple[str, ...] = ()
    """Run directories; empty means the bench's seed-0 balls models (looped, deep-4, rssm, gru)."""
    bench: str = "results/bench"
    """Bench output folder used when --runs is empty."""
    steps: int = 100_000
    """Open-loop steps per rollout."""
    batch: int = 2
    """Rollouts run side by side, from different held-out starts and action sequences."""
    out: str = "results/long_rollout.json"
    """Where to write the figures."""
    seed: int = 0
    """Seed of the starts and actions."""


def rms(x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return None
    return x.float().flatten(1).pow(2).mean(1).sqrt()  # (B,)


@torch.no_grad()
def roll(run: str, cfg: LongRolloutConfig) -> dict:
    model, meta = load_model(run, "cpu")
    ds = TrajectoryDataset.load(meta["data"])
    val = np.asarray(meta["val_episodes"])
    rng = np.random.default_rng(cfg.seed)
    starts = [ds.episode(int(val[i % len(val)]))["obs"][0] for i in range(cfg.batch)]
    state = model.initial(torch.as_tensor(np.stack(starts)).float())
    spec = model.spec
    act_dim = spec.action_dim
    smooth = np.zeros((cfg.batch, act_dim))
    max_h = max_z = max_obs = 0.0
    finite, inside, tail = True, 0, []
    pos_idx = spec.position_idx
    t0 = time.time()
    for t in range(cfg.steps):
        smooth = 0.8 * smooth + 0.6 * rng.normal(size=smooth.shape)
        action = torch.as_tensor(np.clip(smooth, -1, 1), dtype=torch.float32)
        state, out = model.step(state, action)
        h, z = rms(state.h), rms(state.z if isinstance(state.z, torch.Tensor) else None)
        max_h = max(max_h, float(h.max()))
        if z is not None:
            max_z = max(max_z, float(z.max()))
        obs = out["obs"]
        max_obs = max(max_obs, float(obs.abs().max()))
        if not (bool(torch.isfinite(obs).all()) and bool(torch.isfinite(state.h).all())):
            finite = False
            break
        if spec.kinematic:
            p, r = obs[..., pos_idx], obs[..., spec.radius_idx : spec.radius_idx + 1]
            ok = ((p - r >= model.low[pos_idx] - 1e-5) & (p + r <= model.high[pos_idx] + 1e-5)).all(-1).all(-1)
            inside += int(ok.sum())
            if t >= cfg.steps - 1000:
                tail.append(obs[..., pos_idx].numpy())
    seconds = time.time() - t0
    real_std = float(np.std(ds.arrays["obs"][..., pos_idx])) if spec.kinematic else None
    result = {"run": run, "kind": meta["kind"], "params": model.param_count(), "steps": t + 1, "batch": cfg.batch,
              "finite": finite, "max_latent_rms": max_h, "max_carried_state_rms": max_z or None,
              "max_abs_obs": max_obs, "seconds": round(seconds, 1)}
    if spec.kinematic:
        result["inside_box"] = inside / ((t + 1) * cfg.batch)
        result["position_std_last_1000_vs_data"] = float(np.std(np.stack(tail))) / real_std if tail else None
    return result


def main(cfg: LongRolloutConfig) -> None:
    runs = list(cfg.runs)
    if not runs:
        base = Path(cfg.bench) / "runs" / "balls"
        best = json.loads((Path(cfg.bench) / "tuning.json").read_text())["best"]  # each family's tuned rate
        for name in ("looped", "deep-4", "rssm", "gru"):
            run = base / name / f"lr{best[name.split('-')[0]]:g}" / "seed0" / "steps"
            runs += [str(run)] if run.exists() else []
    results = []
    for run in runs:
        r = roll(run, cfg)
        results.append(r)
        print(json.dumps(r))
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(cfg.out), {"steps": cfg.steps, "batch": cfg.batch, "seed": cfg.seed, "results": results})


if __name__ == "__main__":
    main(tyro.cli(LongRolloutConfig))
