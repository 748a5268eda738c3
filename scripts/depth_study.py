"""Does iterative depth pay? Fixed stacks of 1-8 blocks against one looped block on the rail world,
where one observed step passes an impulse through a whole run of touching discs.

    python scripts/depth_study.py --out results/depth                 # about 2 hours on 2 cores
    python scripts/depth_study.py --out /tmp/depth --quick            # about 3 minutes

Every model has the same width, encoder, heads, local attention (neighbours by surface gap,
rebuilt every step) and training (equal gradient steps, same data, same seed); they differ only in
what sits between prelude and coda: one shared block run T times, or k distinct blocks. Variants
with full attention show what locality changes. Each is then scored on held-out episodes of the
world it trained on and on worlds with fewer and more discs (never seen), at every test depth.

Writes under --out: runs.jsonl (training summary per model), results.jsonl (open-loop error per
model, size and depth, with the floors), strata.jsonl (one-step error per stratum of the world's
solver sweeps), world.json (the sweep distribution of every world size), summary.md and plots
(scripts/depth_report.py, which can also rewrite them alone). Re-running re-uses finished runs and scores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import tyro

from depth_report import _read, best_depth, write_summary  # the report, from the result files alone
from loopwm.utils import atomic_write_text, worker_pool

SCORED_EPISODES = 60  # episodes scored on the world sizes a model was not trained on
# thresholds each exit rule is swept over (others: 0.003, 0.01, 0.03, 0.1): token-halt-latent's bound the predicted
# relative distance to the loop's final state, token-halt-error's the predicted fall of one body's error
EXIT_THRESHOLDS = {"token-halt-latent": [0.01, 0.02, 0.05, 0.07, 0.1, 0.2],
                   "token-halt-error": [0.00001, 0.00003, 0.0001, 0.0003, 0.001],
                   "token-delta": [0.003, 0.01, 0.03, 0.05, 0.1, 0.2]}  # 0.05 and 0.2 since session 34


def exit_thresholds(rule: str) -> list[float]:
    """The thresholds the exits stage sweeps for a rule (the latent-change rules: a decade apart, and halves)."""
    return EXIT_THRESHOLDS.get(rule, [0.003, 0.01, 0.03, 0.1])


@dataclass
class DepthStudyConfig:
    """Fixed-depth stacks against a looped block where one step needs many passes."""

    out: str = "results/depth"
    """Result folder (runs go under it, ignored by git)."""
    data_root: str = ""
    """Folder for the datasets (one per size, e.g. rail16); empty: OUT/data. Point several studies at
    one folder to collect each world once."""
    env_id: str = "loopwm/Rail-v0"
    """World: the rail (touching runs, impulses through whole runs in one step)."""
    n_bodies: int = 16
    """Discs in the training world."""
    test_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    """World sizes every model is scored on (the training size among them)."""
    episodes: int = 300
    """Episodes collected per world size."""
    test_episodes: int = 0
    """Episodes collected for the world sizes that are only scored (scoring reads the first
    SCORED_EPISODES of them, so a few more suffice); 0: --episodes."""
    rail_radius: float = 0.0
    """Disc radius on the rail (0: the world's default, 0.01). Discs may cover at most 70% of the
    rail, so 64 discs need 0.005; the datasets of another radius go to their own folders."""
    rail_jitter: float = 0.0
    """Disc radii uniform in rail_radius * (1 +- rail_jitter), masses by area (0: the equal discs of the
    default rail). Unequal discs split every impulse, so a struck run's outcome needs the sweeps done;
    their datasets go to their own folders."""
    rail_gap: float = -1.0
    """Chance that two neighbouring discs start apart (-1: the world's default, 0.1); smaller makes
    longer touching runs. Datasets of another value go to their own folders."""
    steps: int = 1500
    """Gradient steps per model (equal for all); with --until-plateau, the cap."""
    until_plateau: float = 0.0
    """Train each model until its validation loss stops improving by this fraction over the last
    fifth of training (0.02: the benchmark's rule; TrainConfig.until_plateau), `steps` being the
    cap; 0: exactly `steps` for every model."""
    minutes: float = 0.0
    """Wall-clock budget per model in minutes (the learning rate then decays over the budget;
    `steps` is the cap); 0: no budget. Models trained side by side on one accelerator get equal
    time, not equal steps: runs.jsonl records the steps each reached."""
    eval_every: int = 0
    """Steps between validations (0: about 6 over `steps`, 40 with --until-plateau); set it with
    --minutes, where `steps` is only a cap."""
    plateau_ema: float = 0.0
    """With --until-plateau: judge the plateau on a moving average of the weights with this decay
    per step (TrainConfig.plateau_ema, e.g. 0.998); 0: on the live weights."""
    batch_size: int = 64
    """Training windows per step."""
    lr: float = 3e-3
    """Peak learning rate, the same for every model."""
    context: int = 2
    """Observed steps per training window, and before scoring."""
    horizon: int = 4
    """Imagined steps per training window (scoring goes to 10)."""
    horizon_start: int = 0
    """Horizon curriculum (TrainConfig.horizon_start): imagined steps per window for the first part
    of training, --horizon only over the last --horizon-final of it (0: --horizon throughout)."""
    horizon_final: float = 0.25
    """With --horizon-start: the fraction of training at the full --horizon."""
    step_weighting: str = "mean"
    """How a window's predicted steps add up in the loss (TrainConfig.step_weighting): mean or
    balanced (each step's relative improvement counts alike)."""
    settle_weight: float = 0.0
    """Settling penalty of the looped models (TrainConfig.settle_weight: each state token's relative move
    in the loop's last iteration); the stacks have no loop and train without it. 0: off."""
    settle_from: float = 0.0
    """With --settle-weight: the fraction of training done before the penalty starts (TrainConfig.settle_from;
    0.75 applies it over the last quarter)."""
    exit_training: float = 0.0
    """Exit-aware training of the looped models (TrainConfig.exit_training: in half the steps the bodies
    settle one by one under token-delta, at a threshold drawn between a tenth of this and this). 0: off."""
    mu_rec: float = 8.0
    """Mean training loop count of the looped models."""
    models: list[str] = field(default_factory=lambda: ["looped", "deep-1", "deep-2", "deep-4", "deep-8", "looped-full",
                                                       "deep-1-full"])
    """Models: looped, looped-bptt (gradient through every iteration), looped-ds (depth supervision: the
    prediction after every iteration is scored too, weight --depth-supervision), deep-K (K distinct
    blocks); suffixed -lean without prelude and coda blocks, and with local attention unless suffixed
    -full (model_config); -dN sets the width (e.g. looped-d32)."""
    test_depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 16, 24, 32])
    """Test-time loop counts for the looped models."""
    depth_supervision: float = 0.5
    """Weight of the every-iteration loss for the looped-ds models (TrainConfig.depth_supervision)."""
    seed: int = 0
    """Training seed."""
    workers: int = 2
    """Training processes at once (one thread each)."""
    score_threads: int = 2
    """Torch threads for the scoring stages (score, strata, long, exits); 1 when other jobs share the
    cores (two threads on busy cores ran about 3x slower than one in training)."""
    exit_rules: list[str] = field(default_factory=lambda: ["delta", "accel", "token-delta"])
    """Exit rules measured against fixed depth (token-delta: each disc stops on its own; token-halt-latent:
    a halting head fitted to the trained loop, on its training episodes, decides for each disc from the
    distance it predicts is left to the loop's final state; token-halt-error: from the fall of the
    disc's error it predicts is left to gain)."""
    exit_sizes: list[int] = field(default_factory=lambda: [16, 32])
    """World sizes the exit rules are measured on (the larger ones need more, and more varied, depth)."""
    exit_windows: int = 512
    """Windows each exit rule and fixed depth is scored on (the same for all, so the summary gives each
    rule's paired gap to fixed round(M) and to the fixed maximum; more windows, tighter gaps)."""
    stages: list[str] = field(default_factory=lambda: ["train", "score", "exits", "summary"])
    """Stages to run (each re-uses what earlier runs finished): train, score, exits, summary, and
    strata (the per-stratum errors of --models on --test-sizes scored again, replacing theirs), and
    long (each of --models, already scored, at its best test depth on the training size over up to
    --long-windows windows, every window's h1 and h10 kept in long.jsonl for paired comparisons)."""
    long_windows: int = 3000
    """Windows the long stage scores (the score stage's h10 is over 512: too few to rank models a
    few percent apart, as its errors are heavy-tailed)."""
    quick: bool = False
    """A few-minute version for checking the script."""


def study_settings(folder: Path) -> DepthStudyConfig:
    """A study's settings as its study.json records them; fields added since take their defaults."""
    saved = json.loads((Path(folder) / "study.json").read_text())
    known = {f.name for f in fields(DepthStudyConfig)}
    return DepthStudyConfig(**{k: v for k, v in saved.items() if k in known})


def model_config(name: str, cfg: DepthStudyConfig):
    """A model from its name: a base (looped, looped-bptt, looped-ds or deep-K), then optional
    suffixes: -lean (no prelude or coda blocks: the encoder feeds the core directly), -dN (width N
    instead of 64: a narrower loop spends fewer parameters for the same number of passes) and -full
    (full attention instead of local), in that order, e.g. looped-ds-full, looped-d32, deep-4-lean-full."""
    from loopwm.models.world_model import ModelConfig

    base, full, lean, width = name, False, False, {}
    if base.endswith("-full"):
        base, full = base[: -len("-full")], True
    head, _, last = base.rpartition("-")
    if head and last[:1] == "d" and last[1:].isdigit():
        base, width = head, dict(d=int(last[1:]))
    if base.endswith("-lean"):
        base, lean = base[: -len("-lean")], True
    shape = dict(attention="full" if full else "local", attn_bias=True, attn_neighbours=2, neighbours=2, **width,
                 **(dict(n_prelude=0, n_coda=0) if lean else {}))
    loop = dict(kind="looped", mu_rec=cfg.mu_rec, depth_max=int(3 * cfg.mu_rec), **shape)
    if base in ("looped", "looped-ds"):  # looped-ds: the same loop; its training scores every iteration
        model = ModelConfig(**loop)
    elif base == "looped-bptt":  # gradients through every iteration, not only the last ceil(mu_rec / 2)
        model = ModelConfig(**loop, n_grad=int(3 * cfg.mu_rec))
    elif base.startswith("deep-") and base[len("deep-"):].isdigit():  # deep-4-wide must not pass as deep-4
        model = ModelConfig(kind="deep", n_deep=int(base[len("deep-"):]), **shape)
    else:
        raise SystemExit(f"unknown model {name!r}: use looped, looped-bptt, looped-ds or deep-K, optionally followed by "
                         "-lean, then -dN (width N), then -full")
    if model.d % model.n_heads:  # the blocks refuse it too, but only inside a training process, after data collection
        raise SystemExit(f"model {name!r}: the width {model.d} must be a multiple of its {model.n_heads} attention heads")
    return model


def train_overrides(name: str, cfg: DepthStudyConfig) -> dict:
    """Training settings a model variant changes (the rest is the same for every model)."""
    shared = {"horizon_start": cfg.horizon_start, "horizon_final": cfg.horizon_final, "step_weighting": cfg.step_weighting}
    if cfg.settle_weight and name.startswith("looped"):
        shared.update(settle_weight=cfg.settle_weight, settle_from=cfg.settle_from)
    if cfg.exit_training and name.startswith("looped"):
        shared.update(exit_training=cfg.exit_training)
    return {**shared, **({"depth_supervision": cfg.depth_supervision} if name.startswith("looped-ds") else {})}


def train_job(name: str, model, data: str, run: str, *, steps: int, batch_size: int, lr: float, context: int,
              horizon: int, seed: int, until_plateau: float = 0.0, plateau_ema: float = 0.0, minutes: float = 0.0,
              eval_every: int = 0, overrides: dict | None = None) -> dict:
    """One training job for `_train` (the other studies build theirs here too, so a setting added
    to the training job cannot leave their jobs without it)."""
    return {"name": name, "model": model, "data": data, "run": run, "steps": steps, "batch_size": batch_size, "lr": lr,
            "context": context, "horizon": horizon, "seed": seed, "until_plateau": until_plateau,
            "plateau_ema": plateau_ema, "minutes": minutes, "eval_every": eval_every, "overrides": overrides or {}}


def _train(job: dict) -> dict:
    import torch

    from loopwm.checkpoint import read_checkpoint, resolve_checkpoint
    from loopwm.train.loop import TrainConfig, train
    from loopwm.train.schedule import plateaued

    torch.set_num_threads(1)
    converge = job["until_plateau"] > 0
    # the plateau rule reads the validation curve, so it needs enough points: about 40 over the cap
    tcfg = TrainConfig(data=job["data"], out=job["run"], model=job["model"], steps=job["steps"], batch_size=job["batch_size"],
                       lr=job["lr"], context=job["context"], horizon=job["horizon"], seed=job["seed"], threads=1,
                       eval_every=job["eval_every"] or max(1, job["steps"] // (40 if converge else 6)),
                       ckpt_every=max(1, job["steps"] // 6), minutes=job["minutes"], until_plateau=job["until_plateau"],
                       plateau_ema=job["plateau_ema"], progress=False,
                       **job["overrides"])
    train(tcfg)
    records = [json.loads(x) for x in (Path(job["run"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curve = [(r["step"], r["val/obs"]) for r in records if "val/obs" in r]
    averaged = [(r["step"], r["val_avg/obs"]) for r in records if "val_avg/obs" in r]
    _, meta = read_checkpoint(resolve_checkpoint(job["run"]))
    return {"model": job["name"], "steps": records[-1]["step"], "cap": job["steps"], "minutes": job["minutes"],
            "train_seconds": records[-1]["time"],
            "val_curve": curve, **({"val_avg_curve": averaged} if averaged else {}),
            "stop_reason": meta.get("stop_reason", "steps"),
            "device": meta.get("device"),
            # after a plateau's cool-down the last fifth always improves: there the stop reason says it
            "still_improving": None if converge or len(curve) < 5 else not plateaued(curve, 0.02)}


def datasets(cfg: DepthStudyConfig, sizes: list[int]) -> dict[int, tuple[Path, int, dict]]:
    """Per world size: its dataset folder, the episodes to collect and the world's settings. Each
    setting that differs from the world's default, and every episode count but 300, names its own
    folder, so a dataset is never continued with other settings."""
    root = Path(cfg.data_root) if cfg.data_root else Path(cfg.out) / "data"
    short = cfg.env_id.split("/")[-1].split("-")[0].lower()  # loopwm/Rail-v0 -> rail
    kwargs, suffix = {}, ""
    if cfg.rail_radius > 0:
        kwargs["rail_radius"], suffix = cfg.rail_radius, suffix + f"-r{cfg.rail_radius:g}"
    if cfg.rail_jitter > 0:
        kwargs["rail_jitter"], suffix = cfg.rail_jitter, suffix + f"-j{cfg.rail_jitter:g}"
    if cfg.rail_gap >= 0:
        kwargs["rail_gap"], suffix = cfg.rail_gap, suffix + f"-g{cfg.rail_gap:g}"
    out = {}
    for n in sizes:
        e = cfg.episodes if n == cfg.n_bodies else cfg.test_episodes or cfg.episodes
        out[n] = (root / f"{short}{n}{suffix}{f'-e{e}' if e != 300 else ''}", e, kwargs)
    return out


def trained_as_asked(run: dict, cfg: DepthStudyConfig) -> bool:
    """Whether a runs.jsonl row was trained with this invocation's budget (step cap and minutes), so
    that it is kept rather than trained again (rows from before --minutes have none: 0)."""
    return bool(run) and run.get("cap", run.get("steps")) == cfg.steps and run.get("minutes", 0.0) == cfg.minutes


def world_stats(ds) -> dict:
    sweeps = np.concatenate([ds.episode(i)["info_solver_iterations"] for i in range(len(ds))])
    from loopwm.eval.adaptive import sweep_stratum

    names, counts = np.unique(sweep_stratum(sweeps), return_counts=True)
    return {"steps": int(len(sweeps)), "mean": float(sweeps.mean()), "p50": float(np.quantile(sweeps, 0.5)),
            "p90": float(np.quantile(sweeps, 0.9)), "p99": float(np.quantile(sweeps, 0.99)), "max": int(sweeps.max()),
            "fraction": {str(k): float(c / len(sweeps)) for k, c in zip(names, counts)}}


def main(cfg: DepthStudyConfig) -> None:
    import torch

    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset, collect
    from loopwm.eval.adaptive import exit_sweep
    from loopwm.eval.openloop import exit_rule_from, open_loop
    from loopwm.models.exits import TokenHaltExit
    from loopwm.utils import pick_device

    if cfg.quick:
        cfg = replace(cfg, episodes=20, steps=20, test_sizes=[8, 16], models=["looped", "deep-1"], test_depths=[1, 4, 8],
                      mu_rec=4.0)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_settings(out / "study.json", asdict(cfg))
    sizes = sorted(set(cfg.test_sizes) | {cfg.n_bodies})
    data = {n: collect(env_id=cfg.env_id, n_bodies=n, episodes=e, env_kwargs=kwargs, out=str(folder))
            for n, (folder, e, kwargs) in datasets(cfg, sizes).items()}
    world = {n: world_stats(TrajectoryDataset.load(data[n])) for n in sizes}
    scoring_order = sorted(sizes, key=lambda n: (n != cfg.n_bodies, n))  # the training size first
    # sizes that this invocation does not name keep the statistics an earlier one wrote
    known = json.loads((out / "world.json").read_text()) if (out / "world.json").exists() else {}
    known.update({str(k): v for k, v in world.items()})
    atomic_write_text(out / "world.json", json.dumps(dict(sorted(known.items(), key=lambda kv: int(kv[0]))), indent=1))

    # ---- training (equal steps), two runs at a time
    runs_path = out / "runs.jsonl"
    runs = {r["model"]: r for r in _read(runs_path)}
    if "train" not in cfg.stages:
        cfg_models = [m for m in cfg.models if m in runs]
        cfg = replace(cfg, models=cfg_models)
    jobs = [train_job(m, model_config(m, cfg), str(data[cfg.n_bodies]), str(out / "runs" / m), steps=cfg.steps,
                      batch_size=cfg.batch_size, lr=cfg.lr, context=cfg.context, horizon=cfg.horizon, seed=cfg.seed,
                      until_plateau=cfg.until_plateau, plateau_ema=cfg.plateau_ema, minutes=cfg.minutes,
                      eval_every=cfg.eval_every, overrides=train_overrides(m, cfg))
            for m in cfg.models if not trained_as_asked(runs.get(m, {}), cfg)]
    jobs.sort(key=lambda j: -(2 * cfg.mu_rec if j["model"].kind == "looped" else j["model"].n_deep))  # longest first
    jobs = jobs if "train" in cfg.stages else []
    with worker_pool(cfg.workers) as pool:
        for row in pool.map(_train, jobs):
            runs[row["model"]] = row
            _write(runs_path, list(runs.values()))
            print(f"trained {row['model']}: {row['steps']} steps in {row['train_seconds'] / 60:.1f} min", flush=True)

    # ---- scoring: every model on every size; looped models at every test depth
    torch.set_num_threads(max(1, cfg.score_threads))
    device = pick_device("auto")  # the one place that chooses: the accelerator when present
    results_path, strata_path = out / "results.jsonl", out / "strata.jsonl"
    results, strata = _read(results_path), _read(strata_path)
    scored = {(r["model"], r["size"]) for r in results}
    for name in cfg.models if "score" in cfg.stages else []:
        model, meta = load_model(out / "runs" / name, device)
        runs[name]["params"] = model.param_count()
        runs[name]["core_params"] = model.core_param_count()
        depths = cfg.test_depths if model.cfg.kind == "looped" else [model.cfg.n_deep]
        for n in scoring_order:
            if (name, n) in scored:
                continue
            ds = TrajectoryDataset.load(data[n])
            episodes = scored_episodes(meta, ds, n, cfg)
            for depth in depths:
                res = open_loop(model, ds, episodes, cfg.context, 10, 512, depth=depth if model.cfg.kind == "looped" else None,
                                device=device)
                results.append({"model": name, "size": n, "depth": depth, "params": model.param_count(),
                                "h1": float(res.errors[0]), "h10": float(res.errors[9]),
                                **{f"{k}_h1": float(v[0]) for k, v in res.floors.items()},
                                **{f"{k}_h10": float(v[9]) for k, v in res.floors.items()}})
            strata += strata_rows(model, name, ds, episodes, n, cfg, device)
            _write(results_path, results)
            _write(strata_path, strata)
            print(f"scored {name} on {n} discs", flush=True)
    _write(runs_path, list(runs.values()))

    # ---- per-stratum errors again (e.g. for the paired noise added 2026-12-04), replacing earlier rows
    for name in cfg.models if "strata" in cfg.stages else []:
        model, meta = load_model(out / "runs" / name, device)
        for n in scoring_order:
            ds = TrajectoryDataset.load(data[n])
            fresh = strata_rows(model, name, ds, scored_episodes(meta, ds, n, cfg), n, cfg, device)
            strata = [s for s in strata if (s["model"], s["size"]) != (name, n)] + fresh
            _write(strata_path, strata)
            print(f"strata of {name} on {n} discs scored again", flush=True)

    # ---- h1 and h10 over many windows at the best depth, every window kept: paired comparisons
    long_path = out / "long.jsonl"
    long = _read(long_path)
    for name in cfg.models if "long" in cfg.stages else []:
        if any(r["model"] == name and r["size"] == cfg.n_bodies and r["asked"] == cfg.long_windows for r in long):
            continue
        if not any(r["model"] == name and r["size"] == cfg.n_bodies for r in results):
            raise SystemExit(f"{name} has no scores on {cfg.n_bodies} discs yet: run the score stage first "
                             "(the long stage scores it at its best test depth)")
        model, meta = load_model(out / "runs" / name, device)
        ds = TrajectoryDataset.load(data[cfg.n_bodies])
        episodes = scored_episodes(meta, ds, cfg.n_bodies, cfg)
        depth = best_depth(results, name, cfg.n_bodies, strata)["depth"]
        res = open_loop(model, ds, episodes, cfg.context, 10, cfg.long_windows, device=device,
                        depth=depth if model.cfg.kind == "looped" else None)
        long = [r for r in long if (r["model"], r["size"]) != (name, cfg.n_bodies)] + [
            {"model": name, "size": cfg.n_bodies, "depth": depth, "asked": cfg.long_windows, "windows": res.windows,
             "episodes": episode_key(episodes), "h1": float(res.errors[0]), "h10": float(res.errors[9]),
             "window_h1": [round(float(x), 6) for x in res.window_errors[:, 0]],
             "window_h10": [round(float(x), 6) for x in res.window_errors[:, 9]]}]
        _write(long_path, long)
        print(f"long-scored {name} on {cfg.n_bodies} discs over {res.windows} windows", flush=True)

    # ---- adaptive depth: training-free exit rules against fixed depths, per world size
    exits_path = out / "exits.jsonl"
    exits = _read(exits_path)
    # a rule counts as done only on this number of windows (rows from before session 24: 512, no "asked")
    done = {(r["model"], r.get("size", cfg.n_bodies), r["rule"]) for r in exits if r.get("asked", 512) == cfg.exit_windows}
    for name in [m for m in cfg.models if m.startswith("looped")] if "exits" in cfg.stages else []:
        model, meta = load_model(out / "runs" / name, device)
        heads = {}  # token-halt heads, fitted once per model (on the training size) and used on every size
        for n in [n for n in cfg.exit_sizes if n in data]:
            rules = {r: exit_thresholds(r) for r in cfg.exit_rules if (name, n, r) not in done}
            if not rules:
                continue
            heads.update({r: fit_halting(model, meta, data[cfg.n_bodies], cfg, device, r)
                          for r in rules if r.startswith("token-halt") and r not in heads})
            ds = TrajectoryDataset.load(data[n])
            episodes = scored_episodes(meta, ds, n, cfg)
            top = min(16, max(cfg.test_depths))  # error is flat beyond 16 in every run so far; rules stop earlier
            # the fixed depths are scored with every batch of rules: each rule is paired with them window by window
            fixed = sorted({d for d in range(1, top + 1) if d <= 8 or d in cfg.test_depths})
            # rows of another window count stay: the summary pairs each rule with the fixed depths of its own count
            exits = [r for r in exits if (r["model"], r.get("size", cfg.n_bodies)) != (name, n)
                     or r["rule"] not in {*rules, "fixed"} or r.get("asked", 512) != cfg.exit_windows]
            def make_rule(rule, threshold, model, heads=heads):
                return TokenHaltExit(threshold, head=heads[rule]) if rule in heads else exit_rule_from(rule, threshold, model)

            for row in exit_sweep(model, ds, episodes, rules, fixed, top, context=cfg.context, device=device,
                                  windows=cfg.exit_windows, make_rule=make_rule):
                exits.append({"model": name, "size": n, "asked": cfg.exit_windows, **row})
            _write(exits_path, exits)
            print(f"exit rules measured for {name} on {n} discs", flush=True)
    if "summary" in cfg.stages:
        write_summary(out, cfg)


def fit_halting(model, meta: dict, data: str, cfg: DepthStudyConfig, device, rule: str):
    """The head of a token-halt rule (token-halt-latent or token-halt-error: its target; plain token-halt:
    latent, the default of `loopwm halting`), fitted to a looped model on its own training episodes
    (never the held-out ones the exits are scored on); seeded, so a re-run fits the same head."""
    from loopwm.data.dataset import TrajectoryDataset
    from loopwm.train.halting import fit_halting_head

    ds = TrajectoryDataset.load(data)
    held = {int(i) for i in meta["val_episodes"]}
    train_eps = np.array([i for i in range(len(ds)) if i not in held])
    target = rule[len("token-halt-"):] if rule != "token-halt" else "latent"
    head, report = fit_halting_head(model, ds, train_eps, context=cfg.context, windows=512, horizon=10,
                                    max_depth=min(16, max(cfg.test_depths)), seed=cfg.seed, device=device, target=target)
    print(f"halting head ({target}) fitted: {report}", flush=True)
    return head


def scored_episodes(meta: dict, ds, n: int, cfg: DepthStudyConfig) -> np.ndarray:
    """The episodes a model is scored on: its own held-out ones on the training size, else the
    first SCORED_EPISODES (none of which it has seen)."""
    return np.asarray(meta["val_episodes"]) if n == cfg.n_bodies else np.arange(min(len(ds), SCORED_EPISODES))


def episode_key(episodes) -> str:
    """A short fingerprint of the scored episodes: per-window errors of two models pair up only
    when they were scored on the same episodes (the held-out split follows the training seed)."""
    import hashlib

    return hashlib.sha1(",".join(str(int(i)) for i in sorted(episodes)).encode()).hexdigest()[:12]


def strata_rows(model, name: str, ds, episodes, n: int, cfg: DepthStudyConfig, device) -> list[dict]:
    """One-step error per stratum of solver sweeps over up to 3,000 windows; looped models at every
    test depth, a stack at its own."""
    from loopwm.eval.adaptive import error_by_sweeps

    looped = model.cfg.kind == "looped"
    return [{"model": name, "size": n, **row, "depth": row["depth"] if looped else model.cfg.n_deep}
            for row in error_by_sweeps(model, ds, episodes, cfg.test_depths if looped else [None], cfg.context,
                                       max_windows=3000, device=device)]


def write_settings(path: Path, settings: dict) -> None:
    """The resolved settings of this invocation, for readers; those of earlier invocations into the
    same folder (other stages, other models) stay under "earlier", oldest first, so a study built
    in several runs still says how each part was made."""
    earlier = []
    if path.exists():
        prev = json.loads(path.read_text())
        earlier = prev.pop("earlier", []) + [prev]
    atomic_write_text(path, json.dumps({**settings, "earlier": earlier}, indent=1))


def _write(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(tyro.cli(DepthStudyConfig))
