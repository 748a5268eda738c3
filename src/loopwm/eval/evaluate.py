"""`loopwm eval RUN`: every figure a user needs to judge a trained world model, as one dict."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from loopwm.checkpoint import load_model, run_folder, training_context
from loopwm.data import TrajectoryDataset
from loopwm.data.collect import CUSTOM_PREFIX
from loopwm.models.flops import count_step_flops
from loopwm.eval.openloop import (HORIZONS, exit_rule_from, latent_decoding, open_loop, real_vs_imagined, rollout_stats,
                                  steps_per_second, truth_digest)
from loopwm.utils import LoopWMError, atomic_write_json, pick_device

EXIT_FILE = "exit.json"
"""A run's default exit rule, threshold and maximum depth, written by `loopwm eval --keep-exit` (and
the demo); evaluation uses it whenever --exit is left at "auto"."""


def default_exit(run: str | Path) -> dict:
    """The exit rule recorded for a run ({"exit_rule", "threshold", "depth"}), or fixed depth."""
    path = run_folder(run) / EXIT_FILE
    if not path.exists():
        return {"exit_rule": "fixed", "threshold": 0.0, "depth": 0}
    try:
        saved = json.loads(path.read_text())
        return {"exit_rule": str(saved["exit_rule"]), "threshold": float(saved["threshold"]), "depth": int(saved.get("depth", 0))}
    except (ValueError, KeyError, TypeError) as err:
        raise LoopWMError(f"{path} is not a valid exit-rule record ({err}); delete it or rewrite it with "
                          "loopwm eval RUN --exit RULE --threshold T --keep-exit") from err


def resolve_exit(run: str | Path, name: str, threshold: float, depth: int) -> tuple[str, float, int]:
    """An exit setting as asked, with "auto" replaced by the run's recorded rule and threshold (and
    its recorded depth where `depth` is 0)."""
    if name != "auto":
        return name, threshold, depth
    recorded = default_exit(run)
    return recorded["exit_rule"], recorded["threshold"], depth or recorded["depth"]


def keep_exit(run: str | Path, rule: str, threshold: float, depth: int) -> Path:
    """Record the run's default exit rule (atomically)."""
    path = run_folder(run) / EXIT_FILE
    atomic_write_json(path, {"exit_rule": rule, "threshold": float(threshold), "depth": int(depth)})
    return path


@dataclass
class EvalConfig:
    """Evaluate a trained run on its held-out episodes."""

    run: Annotated[str, tyro.conf.Positional]
    """Run directory (or checkpoint JSON) to evaluate."""
    json: bool = False
    """Print one JSON object on stdout instead of a table."""
    data: str = ""
    """Dataset to evaluate on; empty means the run's own dataset (its held-out episodes)."""
    context: int = 0
    """Real observations the model reads before imagining, the first included; 0 means the run's
    training --context (a model scored after more or fewer observations than it trained on reads
    worse than it is)."""
    horizon: int = 50
    """Longest open-loop horizon."""
    max_windows: int = 512
    """Evaluation windows drawn evenly from the held-out episodes."""
    depth: int = 0
    """Loop iterations per step (the most an exit rule may use); 0 means the run's recorded depth,
    else the model's evaluation depth."""
    exit: str = "auto"
    """Exit rule: auto (the one recorded for the run with --keep-exit, else fixed), fixed, delta,
    accel, token-delta (each body stops on its own), pred-delta (each body stops when its predicted change
    stops moving), token-halt (each body stops when its fitted halting head, `loopwm halting RUN`, predicts it
    within --threshold of where the loop ends, or less than --threshold of further error fall), or gate (a model trained with --model.exit-gate)."""
    threshold: float = 0.0
    """Threshold of the exit rule (with --exit auto: the recorded one)."""
    decoding: str = "per-step"
    """Open-loop scoring: "per-step" (each prediction encoded again, as trained by default) or
    "deferred" (imagined in latent space and decoded at each horizon, as --objective dd trains)."""
    keep_exit: bool = False
    """Record --exit, --threshold and --depth as this run's default (RUN/exit.json), used by later
    evaluations that leave --exit at auto."""
    rollout_steps: int = 1000
    """Length of the long imagined rollout that checks boundedness."""
    seed: int = 12345
    """Seed of the long rollout's start and actions."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""
    out: str = ""
    """Folder for eval.json and figures: error vs horizon, iterations per step, and a side-by-side
    real-vs-imagined GIF where frames can be drawn (the built-in world, pixel observations)."""
    gif_steps: int = 150
    """Imagined steps shown in the GIF."""
    per_window: bool = False
    """Also record every window's error at the reported horizons, which windows they were and a digest
    of their true observations, so `loopwm compare` can pair this evaluation with another run's on
    the same windows (paired gaps with standard errors)."""


def frame_renderer(model, env_id: str | None, size: int = 128):
    """A function from one observation in entity form to an RGB frame, or None when the world's
    states cannot be drawn (vector observations that do not fix what the world's renderer shows)."""
    spec = model.spec
    if spec.pixels:
        H, W, C = spec.obs_shape
        scale = max(1, size // H)

        def draw(o):
            frame = np.clip(np.asarray(o), 0, 255).astype(np.uint8).reshape(H, W, C)[..., :3]
            return np.kron(frame, np.ones((scale, scale, 1), dtype=np.uint8))  # nearest-neighbour upscale

        return draw
    if env_id and env_id.startswith("loopwm/Rail"):
        from loopwm.envs import render_obs

        # the rail is a line of small discs at half height: draw it three times larger and keep
        # only the band around the line, so every disc of a touching run stays visible
        wide = 3 * size
        band = (wide // 2 - wide // 16, wide // 2 + wide // 16)
        return lambda o: render_obs(o, size=wide, rows=band)
    if env_id and env_id.startswith("loopwm/"):
        from loopwm.envs import render_obs

        return lambda o: render_obs(o, size=size)
    if env_id:
        from PIL import Image

        from loopwm.envs.painters import state_painter

        paint = state_painter(env_id)
        if paint is not None:  # the world's own renderer, fed the observation (classic control)
            def draw(o):
                frame = Image.fromarray(paint(o))
                return np.asarray(frame.resize((2 * size, max(1, round(frame.height * 2 * size / frame.width)))))

            return draw
    return None


def write_figures(result: dict, rollout: dict | None, model, out: str | Path, title: str = "", gif_steps: int = 150) -> dict:
    """eval.json, the error plot and, with a rollout, the iterations plot and the side-by-side GIF."""
    from loopwm.eval.plots import plot_error_vs_horizon, plot_iterations, save_side_by_side_gif
    from loopwm.utils import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", result)
    files = {"eval": out / "eval.json", "error_plot": plot_error_vs_horizon(result, out / "error_vs_horizon.png", title)}
    if rollout is not None:
        files["iterations_plot"] = plot_iterations(rollout, out / "iterations.png")
        render = frame_renderer(model, result.get("env_id"))
        if render is not None:
            n = min(gif_steps, len(rollout["pred"]))
            files["video"] = save_side_by_side_gif(rollout["true"][:n], rollout["pred"][:n], out / "real_vs_imagined.gif", render)
    return files


def evaluate(cfg: EvalConfig, keep_rollout: bool = False) -> dict:
    """Score a run; with `cfg.out`, also write eval.json and the figures there."""
    result = _evaluate(cfg, keep_rollout=keep_rollout or bool(cfg.out))
    if cfg.out:
        rollout = result["_rollout"] if keep_rollout else result.pop("_rollout", None)
        model, _ = load_model(cfg.run, "cpu")
        clean = {k: v for k, v in result.items() if k != "_rollout"}
        write_figures(clean, rollout, model, cfg.out, str(result.get("env_id") or ""), cfg.gif_steps)
    return result


def _evaluate(cfg: EvalConfig, keep_rollout: bool = False) -> dict:
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.run, device)
    data_path = cfg.data or meta.get("data")
    if not data_path or not Path(data_path).exists():
        raise LoopWMError(f"dataset {data_path!r} of this run is not there; pass --data PATH")
    ds = TrajectoryDataset.load(data_path)
    other_count = (model.any_entity_count and len(ds.obs_shape) == 2 and len(model.spec.obs_shape) == 2
                   and ds.obs_shape[1] == model.spec.obs_shape[1])  # an entity model scores any number of bodies
    if list(ds.obs_shape) != list(model.spec.obs_shape) and not other_count:
        raise LoopWMError(f"dataset observations {tuple(ds.obs_shape)} do not match the model's {tuple(model.spec.obs_shape)}")
    kin = ds.kinematics or {}
    if model.spec.kinematic and kin.get("dt") is not None:  # the model moves bodies by its own step length
        theirs = (float(kin["dt"]), bool(kin.get("integrates", True)))
        if abs(theirs[0] - model.spec.dt) > 1e-9 * max(1.0, model.spec.dt) or theirs[1] != model.spec.integrates:
            raise LoopWMError(f"dataset {data_path} steps {theirs[0]:g} s per observation (positions "
                              f"{'integrate' if theirs[1] else 'do not integrate'} velocities), but the model was trained on "
                              f"{model.spec.dt:g} s ({'integrating' if model.spec.integrates else 'not integrating'}): score it "
                              "on data collected with the same dt and substeps")
    episodes = np.asarray(meta["val_episodes"]) if not cfg.data else np.arange(ds.episodes)
    name, threshold, depth = resolve_exit(cfg.run, cfg.exit, cfg.threshold, cfg.depth)
    if cfg.keep_exit:
        keep_exit(cfg.run, name, threshold, depth)
    depth = depth or None
    rule = exit_rule_from(name, threshold, model)
    context = cfg.context or training_context(cfg.run)
    res = open_loop(model, ds, episodes, context, cfg.horizon, cfg.max_windows, depth, rule, device=device,
                    latent=latent_decoding(cfg.decoding))
    horizon = len(res.errors)  # shorter than asked when held-out episodes are short
    pick = [h for h in HORIZONS if h <= horizon] + ([horizon] if horizon < cfg.horizon and horizon not in HORIZONS else [])
    out = {
        "run": str(cfg.run),
        "env_id": meta.get("env_id"),
        "params": int(model.param_count()),
        "step": int(meta["step"]),
        "windows": res.windows,
        "context": context,
        "open_loop_error": {str(h): float(res.errors[h - 1]) for h in pick},
        "floors": {name: {str(h): float(v[h - 1]) for h in pick} for name, v in res.floors.items()},
        "iterations_per_step": float(res.iterations.mean()),
        "token_iterations_per_step": float(res.token_iterations.mean()),
        "max_a_bar": _finite_or_none(model.max_a_bar()),
        "exit_rule": name,
        "threshold": threshold,
        "decoding": cfg.decoding,
        "depth": depth or model.cfg.resolved_eval_depth(),
        "open_loop_curve": {"model": res.errors.tolist(), "floors": {k: v.tolist() for k, v in res.floors.items()}},
    }
    best_floor = {str(h): min(out["floors"][f][str(h)] for f in out["floors"]) for h in pick}
    out["ratio_to_best_floor"] = {h: out["open_loop_error"][h] / max(best_floor[h], 1e-12) for h in best_floor}
    if cfg.per_window:
        out["per_window"] = per_window_record(res, ds, pick)
    first = ds.episode(int(episodes[0]))
    latent = latent_decoding(cfg.decoding)  # compute of an imagined step as this decoding runs it
    out["flops_per_step"] = count_step_flops(
        model, torch.as_tensor(first["obs"][0], device=device), torch.as_tensor(first["action"][0], device=device), depth,
        latent=latent)
    out["steps_per_second"] = steps_per_second(
        model, model._as_entities(torch.as_tensor(first["obs"][0], device=device).float()),
        torch.as_tensor(first["action"][0], device=device), depth=depth, exit_rule=rule, latent=latent)
    if meta.get("env_id") and not meta["env_id"].startswith(CUSTOM_PREFIX):  # a user's own object cannot be re-made
        rollout = real_vs_imagined(model, meta["env_id"], meta.get("env_kwargs") or {}, cfg.rollout_steps,
                                   context, cfg.seed, depth, rule, device, ds.manifest.get("obs", "state"),
                                   ds.manifest.get("pixel_size"))
        out.update(rollout_stats(model, rollout))
        if keep_rollout:
            out["_rollout"] = rollout
    return out


def per_window_record(res, ds, horizons: list[int]) -> dict:
    """The part of an evaluation that `loopwm compare` pairs: each window's error at `horizons`
    (6 significant digits), the windows as (episode, start) and the digest of their true observations
    in dataset `ds`."""
    return {
        "windows": res.window_rows[:, :2].tolist(),
        "truth_sha256": truth_digest(ds, res.window_rows),
        "errors": {str(h): [float(f"{x:.6g}") for x in res.window_errors[:, h - 1]] for h in horizons},
    }


def _finite_or_none(x: float):
    return x if x == x else None  # NaN (a model without A_bar) is not valid JSON


def format_table(result: dict) -> str:
    hs = list(result["open_loop_error"])
    lines = [f"{'horizon':>10} " + " ".join(f"{h:>8}" for h in hs)]
    lines.append(f"{'model':>10} " + " ".join(f"{result['open_loop_error'][h]:8.4f}" for h in hs))
    for name, values in result["floors"].items():
        lines.append(f"{name[:10]:>10} " + " ".join(f"{values[h]:8.4f}" for h in hs))
    a_bar = "n/a" if result["max_a_bar"] is None else f"{result['max_a_bar']:.3f}"
    lines.append(f"params {result['params']:,}  iterations/step {result['iterations_per_step']:.2f}  "
                 f"max A_bar {a_bar}  batch-1 steps/s {result['steps_per_second']:.0f}  FLOPs/step {result['flops_per_step']:,}")
    if "rollout_max_abs" in result:
        box = f", inside box {result['rollout_inside_box']:.3f}" if "rollout_inside_box" in result else ""
        lines.append(f"{result['rollout_steps']}-step rollout: max |obs| {result['rollout_max_abs']:.3f}, "
                     f"std ratio {result['rollout_std_ratio']:.3f}{box}")
    return "\n".join(lines)
