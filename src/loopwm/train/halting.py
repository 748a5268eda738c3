"""Fit a halting head to a trained looped world model, for the token-halt exit rule.

The world model stays frozen. Over windows of its own training episodes it reads the context, then
imagines `horizon` steps at `max_depth` iterations; after every iteration each body's prediction
is read out and scored against the truth. The head (models/exits.HaltingHead) learns, from what
the loop can see at that moment, log(g + eps): g is how much that body's one-step error still falls
between this iteration and the best later one (or, with --target latent, how far its state still is
from where the loop ends). At evaluation a body stops iterating once the
predicted fall is below the rule's threshold. Global tokens are taught the largest fall over their
scene's bodies, so they keep running while any body still gains.

    loopwm halting runs/rail            # writes runs/rail/halting.safetensors + halting.json
    loopwm eval runs/rail --exit token-halt --threshold 0.07 --depth 16
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from loopwm.checkpoint import load_model, resolve_checkpoint, run_folder, save_halting_head, training_context
from loopwm.data.dataset import TrajectoryDataset
from loopwm.models.dynamics import body_squared_error
from loopwm.models.exits import ExitRule, HaltingHead
from loopwm.utils import LoopWMError, pick_device, seed_everything

MAX_ROWS = 400_000  # (token, iteration) examples kept for fitting: about 60 MB at d=32


@dataclass
class HaltingConfig:
    """Fit a per-token halting head to a trained looped model (then: loopwm eval RUN --exit token-halt)."""

    run: Annotated[str, tyro.conf.Positional]
    """Run directory of a looped world model."""
    data: str = ""
    """Dataset to fit on; empty means the run's own dataset (its training episodes only, never the
    held-out ones the evaluation scores)."""
    windows: int = 512
    """Windows read and imagined from the training episodes (a fifth of them are held out of the fit
    to report how well the head predicts)."""
    horizon: int = 10
    """Imagined steps per window (the head then sees imagined states, as open-loop evaluation does)."""
    max_depth: int = 16
    """Iterations run per step while recording: the head learns the gain left up to this depth."""
    context: int = 0
    """Real observations read before imagining; 0 means the run's training --context."""
    target: str = "latent"
    """What the head predicts, and --threshold then bounds: "latent" (how far the body's state still
    is from where the loop ends at --max-depth, relative to that state's size) or "error" (how much
    more the body's one-step error would fall by iterating on). The state is also what the next step
    starts from, which the one-step error does not see: on the 32-disc rail the error head was level
    with or worse than fixed depth at equal cost, the latent head at or ahead of it (docs/LOG.md,
    session 33)."""
    steps: int = 2000
    """Optimiser steps of the head (batch 4,096)."""
    lr: float = 3e-3
    """Adam learning rate of the head."""
    hidden: int = 32
    """Hidden width of the head's two-layer perceptron."""
    seed: int = 0
    """Seed of the example subsample, the held-out windows and the head's initialisation."""
    device: str = "auto"
    """Where to run: "auto", "cpu", or an accelerator device as torch names it."""


class _Recorder(ExitRule):
    """Never stops; after every iteration keeps the head's features of every token and what its
    target needs: the state (latent), or the error of every body's prediction read out at that point
    (error; only then does the model read predictions out mid-loop, a coda pass per iteration)."""

    def __init__(self, model, head: HaltingHead):
        super().__init__()
        self.model, self.head = model, head
        self.reads_predictions = head.target == "error"
        self.obs = self.true = None  # (B, N, F) this step's input observation and the truth it predicts

    def bind(self, readout) -> None:
        self.readout = readout

    def start(self, z0):
        self.features, self.found = [], []

    def should_stop(self, t, z_prev, z_new, rows):
        model = self.model
        self.features.append(self.head.features(t, z_prev, z_new))  # (B, N_h, K)
        if self.reads_predictions:
            pred = model._decode(self.obs, self.readout(z_new, rows))  # (B, N, F)
            self.found.append(body_squared_error(model, pred, self.true) / model.dynamic.sum())  # (B, N)
        else:
            self.found.append(z_new)  # (B, N_h, d)
        return torch.zeros(z_new.shape[0], dtype=torch.bool, device=z_new.device)


def gain_targets(errors: torch.Tensor) -> torch.Tensor:
    """From per-iteration errors (T, ...) of one step: how much lower the best strictly later
    iteration is than iteration t, at least 0 (0 at the last iteration): (T, ...)."""
    later_best = errors.flip(0).cummin(0).values.flip(0)  # (T, ...): best of iterations t..T-1
    later = torch.cat([later_best[1:], errors[-1:]])  # best of t+1..T-1 (the last: itself)
    return (errors - later).clamp(min=0.0)


@torch.no_grad()
def record_examples(model, head: HaltingHead, ds, windows: np.ndarray, context: int, horizon: int, max_depth: int,
                    device, keep: float, gen: torch.Generator, batch_size: int = 64) -> tuple[torch.Tensor, ...]:
    """Features (M, K), targets log(g + eps) (M,) and each example's window index (M,)."""
    c = context - 1
    rec = _Recorder(model, head)
    feats, targets, owners = [], [], []
    for i in range(0, len(windows), batch_size):
        batch = ds.batch(windows[i : i + batch_size])
        obs = model._as_entities(torch.as_tensor(batch["obs"], device=device).float())  # (B, L+1, N, F)
        act = torch.as_tensor(batch["action"], device=device)  # (B, L, ...)
        B, N = obs.shape[0], obs.shape[2]
        state = model.read(obs[:, : c + 1], act[:, :c], max_depth)
        for h in range(horizon):
            rec.obs, rec.true = state.obs, obs[:, c + 1 + h]
            state, _ = model.step(state, act[:, c + h], max_depth, rec)
            x = torch.stack(rec.features)  # (T, B, N_h, K)
            found = torch.stack(rec.found)  # (T, B, N_h, d) states or (T, B, N) errors
            if head.target == "latent":
                gain = (found - found[-1]).norm(dim=-1) / (found[-1].norm(dim=-1) + 1e-8)  # (T, B, N_h)
            else:
                gain = gain_targets(found)  # (T, B, N)
                extra = x.shape[2] - N  # global tokens: the scene's largest gain
                gain = torch.cat([gain, gain.amax(-1, keepdim=True).expand(-1, -1, extra)], -1)  # (T, B, N_h)
            pick = torch.rand(gain.shape, generator=gen) < keep  # (T, B, N_h)
            owner = (i + torch.arange(B))[None, :, None].expand_as(gain)  # (T, B, N_h)
            feats.append(x[pick].cpu())
            targets.append(torch.log(gain[pick] + head.eps).cpu())
            owners.append(owner[pick])
    return torch.cat(feats), torch.cat(targets), torch.cat(owners)


def _rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def fit_halting_head(model, ds, episodes, *, context: int, windows: int = 512, horizon: int = 10, max_depth: int = 16,
                     steps: int = 2000, lr: float = 3e-3, hidden: int = 32, seed: int = 0, device="cpu",
                     target: str = "error") -> tuple[HaltingHead, dict]:
    """Fit a head to `model` on windows of `episodes`; returns it and a report (examples, the held-out
    fit: mean squared error against predicting the mean, rank correlation, and the share of
    examples with any gain above 1e-3)."""
    if getattr(model.cfg, "kind", None) != "looped":
        raise LoopWMError("a halting head decides when a loop stops iterating: this model is not a looped one")
    if model.spec.pixels:
        raise LoopWMError("the halting head is fitted per body, and this model reads frames (its tokens are patches): "
                          "use the token-delta or pred-delta exit rule")
    if context < 1:
        raise LoopWMError(f"context {context} reads no observation: use 1 or more")
    if target not in ("error", "latent"):
        raise LoopWMError(f"unknown halting target {target!r}: use error or latent")
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    episodes = np.asarray(episodes, dtype=np.int64)
    all_windows = ds.windows(episodes, context - 1 + horizon)
    if len(all_windows) < 5:
        raise LoopWMError(f"only {len(all_windows)} windows of {context - 1 + horizon} steps in the fitting episodes: "
                          "collect longer or more episodes, or lower --horizon")
    rows = all_windows[np.unique(np.linspace(0, len(all_windows) - 1, min(windows, len(all_windows))).astype(int))]
    head = HaltingHead(model.cfg.d, hidden, target=target).to(device)
    n_tokens = model.n_state_tokens(ds.obs_shape[0])  # bodies + global tokens
    keep = min(1.0, MAX_ROWS / max(1, len(rows) * horizon * max_depth * n_tokens))  # a random share of every batch
    x, y, owner = record_examples(model, head, ds, rows, context, horizon, max_depth, device, keep, gen)
    held = torch.rand(len(rows), generator=gen) < 0.2  # whole windows held out of the fit
    val = held[owner]
    xt, yt, xv, yv = x[~val].to(device), y[~val].to(device), x[val].to(device), y[val].to(device)
    with torch.no_grad():  # start from the best constant: most targets sit near log(eps), far from 0
        head.mlp[-1].bias.fill_(float(yt.mean()))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    head.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(4096, len(xt)),), generator=gen).to(device)
        loss = torch.nn.functional.mse_loss(head(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    head.eval()
    with torch.no_grad():
        pv = head(xv) if len(xv) else yv
        base = float(((yv - yt.mean()) ** 2).mean()) if len(yv) else float("nan")
        mse = float(((pv - yv) ** 2).mean()) if len(yv) else float("nan")
    report = {"windows": int(len(rows)), "examples": int(len(y)), "held_out_examples": int(val.sum()),
              "held_out_mse": mse, "held_out_mse_of_mean": base,
              "held_out_rank_corr": _rank_corr(pv, yv) if len(yv) > 2 else None,
              "share_gain_above_1e-3": float((y > np.log(1e-3 + head.eps)).float().mean())}
    return head, report


def run_halting(cfg: HaltingConfig) -> tuple[Path, dict]:
    """Fit and save the head of `cfg.run`; returns the JSON path and the fit report."""
    device = pick_device(cfg.device)
    ckpt = resolve_checkpoint(cfg.run)
    model, meta = load_model(ckpt, device)  # meta: the checkpoint's record, whose hash the head is tied to
    for p in model.parameters():
        p.requires_grad_(False)
    data_path = cfg.data or meta.get("data")
    if not data_path or not Path(data_path).exists():
        raise LoopWMError(f"dataset {data_path!r} of this run is not there; pass --data PATH")
    ds = TrajectoryDataset.load(data_path)
    if len(ds.obs_shape) != len(model.spec.obs_shape) or ds.obs_shape[-1] != model.spec.obs_shape[-1]:
        raise LoopWMError(f"dataset observations {tuple(ds.obs_shape)} do not match the model's {tuple(model.spec.obs_shape)}")
    held = set(int(i) for i in meta.get("val_episodes", [])) if not cfg.data else set()
    episodes = np.array([i for i in range(ds.episodes) if i not in held], dtype=np.int64)
    run_dir = run_folder(ckpt)
    context = cfg.context or training_context(run_dir)
    head, report = fit_halting_head(model, ds, episodes, context=context, windows=cfg.windows, horizon=cfg.horizon,
                                    max_depth=cfg.max_depth, steps=cfg.steps, lr=cfg.lr, hidden=cfg.hidden,
                                    seed=cfg.seed, device=device, target=cfg.target)
    path = save_halting_head(run_dir, head, meta, {"fit": {**asdict(cfg), "context": context}, "report": report})
    return path, report
