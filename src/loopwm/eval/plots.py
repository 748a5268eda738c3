"""Figures and videos from evaluation results. Plot functions read plain arrays or result dicts only."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_error_vs_horizon(result: dict, path: str | Path, title: str = "") -> Path:
    """Open-loop error of the model against the floors, from an `evaluate` result dict."""
    plt = _plt()
    curve = result["open_loop_curve"]
    hs = np.arange(1, len(curve["model"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(hs, curve["model"], color="C3", lw=2.2, label=f"looped model ({result['params']:,} params)")
    styles = {"copy_last": ("C0", "--"), "constant_velocity": ("C2", "-."), "mean": ("0.5", ":")}
    for name, values in curve["floors"].items():
        color, ls = styles.get(name, ("k", ":"))
        ax.plot(hs, values, color=color, ls=ls, lw=1.5, label=f"floor: {name.replace('_', ' ')}")
    ax.set_yscale("log")
    ax.set_xlabel("open-loop horizon (imagined steps)")
    ax.set_ylabel("normalised MSE (held-out episodes)")
    ax.set_title(title or "Open-loop prediction error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_iterations(rollout: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Loop iterations the model used per step, with the world's own difficulty below. Where the
    rollout holds a tracked pass (the model reads each real observation and predicts the next), that
    is what is drawn: its effort answers the real world's difficulty step by step."""
    plt = _plt()
    tracked = "tracked_iterations" in rollout
    pre = "tracked_" if tracked else ""
    scene = rollout[f"{pre}iterations"]
    token = rollout.get(f"{pre}token_iterations")
    shown = min(len(scene), 300)  # a window short enough to see single events
    iters = scene[:shown]
    t = np.arange(1, shown + 1)
    fig, axes = plt.subplots(2, 1, figsize=(7, 4.5), dpi=120, sharex=True)
    axes[0].step(t, iters, where="mid", color="C3", lw=1, label="per scene")
    if token is not None and not np.allclose(token[:shown], iters):  # a per-token exit rule
        axes[0].step(t, token[:shown], where="mid", color="C2", lw=1, label="per body (mean)")
        axes[0].legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("model loop\niterations")
    axes[0].set_ylim(0, max(iters.max(), 1) + 1)
    what = "tracking the real world" if tracked else "imagined"
    axes[0].set_title(title or f"Loop iterations per step, {what} (first {shown}; mean {iters.mean():.2f})")
    axes[1].step(t, rollout[f"{pre}solver_iterations"][:shown], where="mid", color="C0", lw=1, label="world solver iterations")
    axes[1].step(t, rollout[f"{pre}contacts"][:shown], where="mid", color="C1", lw=1, alpha=0.7, label="world contacts")
    axes[1].set_ylabel("ground-truth\ndifficulty")
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=8, loc="upper right")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def save_side_by_side_gif(true_obs: np.ndarray, pred_obs: np.ndarray, path: str | Path,
                          render: Callable[[np.ndarray], np.ndarray], fps: int = 20,
                          notes: list[str] | None = None) -> Path:
    """GIF of the real world (left) and the model's imagined rollout (right), frame by frame."""
    import imageio.v2 as imageio
    from PIL import Image, ImageDraw  # Pillow comes with matplotlib

    frames = []
    for step, (true, pred) in enumerate(zip(true_obs, pred_obs), start=1):
        left, right = render(true), render(pred)
        gap = np.full((left.shape[0], 4, 3), 255, dtype=np.uint8)
        body = np.concatenate([left, gap, right], axis=1)
        header = Image.new("RGB", (body.shape[1], 14), (240, 240, 240))
        draw = ImageDraw.Draw(header)
        draw.text((3, 1), "real world", fill=(0, 0, 0))
        note = f", {notes[step - 1]}" if notes is not None else ""
        draw.text((left.shape[1] + 7, 1), f"imagined, step {step}{note}", fill=(180, 30, 30))
        frames.append(np.concatenate([np.asarray(header), body], axis=0))
    imageio.mimsave(path, frames, duration=1.0 / fps, loop=0)
    return Path(path)
