"""`loopwm demo`: the whole method on the built-in world in under ten minutes on two CPU cores.

collect episodes -> train a looped world model for a wall-clock budget -> record its exit rule ->
evaluate on held-out episodes -> write plots, a side-by-side GIF and a summary. Re-running the same
command resumes.

The world is the rail (`loopwm/Rail-v0`): equal discs on one line in touching runs, where one
observed step can pass an impulse through a whole run, so the work a step needs ranges from nothing
(free flight) to tens of solver sweeps. The model stops iterating body by body (the pred-delta exit
rule: a body stops once another pass would not change its prediction), so its effort can follow that
difficulty; the summary says how far it does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from loopwm.data import CollectConfig, collect
from loopwm.checkpoint import load_model
from loopwm.eval.evaluate import EvalConfig, evaluate, format_table, keep_exit, write_figures
from loopwm.models.exits import check_exit_rule
from loopwm.models.world_model import ModelConfig
from loopwm.train.halting import HaltingConfig, run_halting
from loopwm.train.loop import TrainConfig, train
from loopwm.utils import atomic_write_json


def demo_model() -> ModelConfig:
    # full attention with the learned pair-geometry bias: the best of eight models in the depth study
    # (results/depth); trained around 4 iterations, run up to 16 with an exit rule
    return ModelConfig(d=64, n_heads=4, mlp_ratio=4, mu_rec=4.0, depth_max=12, n_grad=0, neighbours=2,
                       attention="full", attn_bias=True)


@dataclass
class DemoConfig:
    """Collect data on the built-in world, train a looped world model, evaluate it and draw it."""

    out: str = "runs/demo"
    """Run directory; the dataset goes to OUT/data."""
    env_id: str = "loopwm/Rail-v0"
    """Built-in world (or any registered id with (N, F) observations)."""
    n_bodies: int = 16
    """Bodies in the world."""
    rail_radius: float = 0.0
    """Disc radius on the rail (0: the world's default, 0.01). Discs may cover at most 70% of the rail,
    so 32 discs of the default radius leave few free ones; 0.005 keeps gaps between runs."""
    episodes: int = 300
    """Episodes to collect (200 steps each by default)."""
    train_minutes: float = 7.0
    """Wall-clock budget for training."""
    train_steps: int = 100_000
    """Upper bound on gradient steps (the budget usually ends training first)."""
    model: ModelConfig = field(default_factory=demo_model)
    """Model architecture."""
    batch_size: int = 32
    """Training windows per step."""
    lr: float = 3e-3
    """Peak learning rate."""
    depth_supervision: float = 0.0
    """Weight of the loss on the prediction after every loop iteration (0: off). It teaches the loop to
    improve with each pass, so its effort can follow difficulty (see the depth study in the README)."""
    settle_weight: float = 0.0
    """Weight of the settling penalty (TrainConfig.settle_weight): tokens with nothing left to compute
    learn to stand still, so a latent exit rule can stop them early (0: off)."""
    settle_from: float = 0.0
    """With --settle-weight: the fraction of training after which the penalty applies (0: throughout;
    0.75, the last quarter, costs the least accuracy: results/demo-settle)."""
    hard_fraction: float = 0.0
    """Share of each batch drawn in proportion to how much happens in a window (TrainConfig.hard_fraction),
    so that the rare collision steps, which need the most passes, are seen more often (0: uniform)."""
    context: int = 2
    """Observed steps per training window."""
    horizon: int = 4
    """Imagined steps per training window."""
    exit_rule: str = "pred-delta"
    """Exit rule recorded for the run and used by its evaluation (fixed, delta, accel, token-delta,
    pred-delta, or token-halt, whose halting head the demo then fits to the trained loop: `loopwm
    halting`, seconds to a minute). pred-delta stops a body once another pass would no longer change
    its prediction; the latent rules also wait for free-flying bodies whose state still settles."""
    threshold: float = 0.01
    """Threshold of the exit rule (pred-delta: the RMS change of a body's predicted features between
    passes, in normalised units)."""
    exit_depth: int = 16
    """Most iterations the exit rule may use per step."""
    gif_steps: int = 150
    """Frames in the side-by-side video."""
    seed: int = 0
    """Seed for collection, training and evaluation."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""
    threads: int = 0
    """CPU threads for training (0: torch's default, one per core). On cores other jobs are using, 1 is
    about 3x faster than 2 for this model size."""
    tiny: bool = False
    """Shrink everything to a seconds-long smoke run (for tests)."""
    progress: bool = True
    """Show progress bars."""


def run_demo(cfg: DemoConfig) -> dict:
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.tiny:
        cfg = replace(cfg, episodes=min(cfg.episodes, 8), train_minutes=0, train_steps=min(cfg.train_steps, 4),
                      model=replace(cfg.model, d=16, n_heads=2, mu_rec=2.0), gif_steps=min(cfg.gif_steps, 10))
    check_exit_rule(cfg.exit_rule)  # refused now, not after minutes of training
    atomic_write_json(out / "demo_config.json", asdict(cfg))
    episode_steps = 60 if cfg.tiny else None
    data_dir = collect(CollectConfig(env_id=cfg.env_id, out=str(out / "data"), episodes=cfg.episodes, seed=cfg.seed,
                                     n_bodies=cfg.n_bodies, max_episode_steps=episode_steps, progress=cfg.progress),
                       env_kwargs={"rail_radius": cfg.rail_radius} if cfg.rail_radius else None)
    tcfg = TrainConfig(data=str(data_dir), out=str(out), model=cfg.model, steps=cfg.train_steps, minutes=cfg.train_minutes,
                       batch_size=cfg.batch_size, lr=cfg.lr, depth_supervision=cfg.depth_supervision,
                       settle_weight=cfg.settle_weight, settle_from=cfg.settle_from, hard_fraction=cfg.hard_fraction,
                       context=cfg.context, horizon=cfg.horizon, seed=cfg.seed,
                       device=cfg.device, threads=cfg.threads, progress=cfg.progress, eval_every=250 if not cfg.tiny else 2,
                       ckpt_every=250 if not cfg.tiny else 2)
    train(tcfg)
    exit_depth = cfg.exit_depth if not cfg.tiny else 4
    if cfg.model.kind == "looped":
        if cfg.exit_rule == "token-halt":  # fitted again after every (resumed) training: it is tied to the checkpoint
            run_halting(HaltingConfig(run=str(out), max_depth=exit_depth, seed=cfg.seed, device=cfg.device,
                                      **({"windows": 8, "horizon": 3, "steps": 20} if cfg.tiny else {})))
        keep_exit(out, cfg.exit_rule, cfg.threshold, exit_depth)  # `loopwm eval RUN` uses it from now on
    ecfg = EvalConfig(run=str(out), device=cfg.device, seed=cfg.seed + 12345, context=cfg.context,
                      rollout_steps=1000 if not cfg.tiny else 30, horizon=50 if not cfg.tiny else 10,
                      max_windows=512 if not cfg.tiny else 16)
    result = evaluate(ecfg, keep_rollout=True)
    rollout = result.pop("_rollout", None)
    model, _ = load_model(out, "cpu")
    files = {"config": out / "config.json", "metrics": out / "metrics.jsonl",
             **write_figures(result, rollout, model, out, f"{cfg.env_id}, {cfg.n_bodies} bodies", cfg.gif_steps)}
    files["checkpoint"] = sorted((out / "checkpoints").glob("step_*.safetensors"))[-1]
    minutes = (time.time() - start) / 60
    print()
    print(format_table(result))
    print(summary(result, files, minutes))
    print(f"\nplay it in the browser, beside the real world:  loopwm play {out}")
    return result


def summary(result: dict, files: dict, minutes: float) -> str:
    err = result["open_loop_error"]
    pick = [h for h in ("1", "10", "50") if h in err]
    best = {h: min(v[h] for v in result["floors"].values()) for h in pick}
    lines = ["", "loopwm demo finished in %.1f min" % minutes]
    for h in pick:
        lines.append(f"  open-loop error at horizon {h:>2}: {err[h]:.4f}  (best floor {best[h]:.4f}, ratio {err[h] / max(best[h], 1e-12):.2f})")
    a_bar = "n/a" if result["max_a_bar"] is None else f"{result['max_a_bar']:.3f}"
    lines.append(f"  parameters: {result['params']:,}   loop iterations per step: {result['iterations_per_step']:.2f} "
                 f"(per body {result['token_iterations_per_step']:.2f}, exit rule {result['exit_rule']} "
                 f"{result['threshold']:g}, at most {result['depth']})   max A_bar: {a_bar}")
    if result.get("easy_iterations") is not None and result.get("hard_iterations") is not None:
        rho = result.get("tracked_token_iterations_solver_spearman")
        lines.append(f"  effort follows difficulty: {result['easy_iterations']:.2f} iterations per step in free flight "
                     f"({result['easy_steps']} steps) against {result['hard_iterations']:.2f} on steps needing "
                     f"{result['hard_sweeps']}+ solver sweeps ({result['hard_steps']}); per body "
                     f"{result['easy_token_iterations']:.2f} against {result['hard_token_iterations']:.2f}; "
                     f"rank correlation with the world's sweeps {'n/a' if rho is None else f'{rho:.2f}'}")
    if "rollout_std_ratio" in result:
        lines.append(f"  {result['rollout_steps']}-step imagined rollout: max |obs| {result['rollout_max_abs']:.3f}, "
                     f"std ratio {result['rollout_std_ratio']:.2f}, inside box {result.get('rollout_inside_box', 1.0):.3f}")
    lines.append("  files:")
    for name, path in files.items():
        lines.append(f"    {name:<16} {path}")
    return "\n".join(lines)

