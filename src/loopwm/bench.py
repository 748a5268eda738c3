"""`loopwm bench`: train a suite of world models on the same data and score them the same way.

Every model (the looped model, narrower loops with --loop-widths, deep transformers of growing depth
and width, the RSSM) is trained by the same loop on the same episodes, once per budget currency: an
equal number of gradient steps, an equal wall-clock time, or each until its validation error stops
improving (`converged`: the last fifth of its training not 2% better than the rest, a cap on steps;
see TrainConfig.until_plateau). Each model family gets the same small learning-rate sweep first. All
are scored by the same open-loop code on the same held-out episodes; FLOPs and imagined steps per
second are measured at the end, side by side in this one process with nothing else running.

Training runs go to `--workers` processes of one thread each (the work is many small kernels, which
gain nothing from a second thread below batch 128): in the wall-clock currency every model trains
while one other run shares the machine, the same condition for all.

Output, under --out:

    results.jsonl     one row per model, world, seed, budget and horizon (with the steps, samples and
                      minutes each model trained, and why it stopped)
    curves.jsonl      every run's validation curve (learning_curves.png draws them)
    depth.jsonl       each loop's horizon-10 error at each test-time iteration count
    tuning.json       the learning rate kept per model family (per model with --tune-each-model, per
                      world with --tune-each-world),
                      with the scores behind it
    scores/           every finished run's scores, validation curve and architecture (small JSON,
                      meant to be committed): a re-run with the same data and settings reuses them
                      instead of training again, so a long bench can finish over several sessions
                      even where the runs/ folder (checkpoints) does not survive
    config.json       the settings, with the models reported and those kept from an earlier run
    table.md          the horizon-1/10/50 errors (mean ± std over seeds), parameters, FLOPs, speeds
    findings.md       the comparisons the numbers support, stated in words
    *.png             error vs horizon, parameter efficiency, error vs test-time iterations, compute

A run with a subset of models (--models deep-16) adds its rows to those an earlier run of the same
comparison left in --out (same bodies, episodes, budgets and horizon) instead of replacing them;
the kept models' speeds stay those measured in their own run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from loopwm.checkpoint import build_model, load_model
from loopwm.data import CollectConfig, TrajectoryDataset, collect
from loopwm.eval.bench_report import BUDGETS, write_reports
from loopwm.eval.openloop import open_loop
from loopwm.models.flops import count_step_flops
from loopwm.models.rssm import RSSMConfig
from loopwm.models.world_model import ModelConfig
from loopwm.train.loop import TrainConfig, config_diff, train
from loopwm.utils import LoopWMError, atomic_write_text, pick_device, worker_pool

WORLD_IDS = {"balls": "loopwm/Balls-v0", "cradle": "loopwm/Cradle-v0", "chain": "loopwm/Chain-v0", "mixed": "loopwm/Mixed-v0",
             "rail": "loopwm/Rail-v0"}
# The entity models' attention (looped and deep alike, so that the comparison stays fair). "local" is
# the depth study's shape: each body attends to its 2 nearest bodies by surface gap and itself, with a
# learned bias from each pair's geometry, and its token carries its 2 nearest neighbours' relative
# features, so that an impulse through k bodies needs about k passes (docs/LOG.md, session 18).
ATTENTION = {"full": {}, "local": dict(attention="local", attn_bias=True, attn_neighbours=2, neighbours=2)}


def world_source(world: str, cfg: BenchConfig) -> dict:
    """How to collect a benchmark world: a built-in regime ("balls"), the same from rendered frames
    ("balls-pixels"), or any Gymnasium id ("Pendulum-v1", "HalfCheetah-v5")."""
    name, pixels = (world[: -len("-pixels")], True) if world.endswith("-pixels") else (world, False)
    if name in WORLD_IDS:
        kwargs = {"rail_radius": cfg.rail_radius} if name == "rail" and cfg.rail_radius > 0 else {}
        return {"env_id": WORLD_IDS[name], "n_bodies": cfg.n_bodies, "obs": "pixels" if pixels else "state",
                "pixel_size": cfg.pixel_size, "env_kwargs": kwargs}
    if "/" in name and name.split("/")[0] == "loopwm":
        raise LoopWMError(f"unknown built-in world {name!r}: choose from {', '.join(WORLD_IDS)}")
    return {"env_id": name, "n_bodies": None, "obs": "pixels" if pixels else "state", "pixel_size": cfg.pixel_size,
            "max_episode_steps": cfg.max_episode_steps}
CONTEXT = 4  # observed steps before open-loop scoring, equal to training's context


def model_suite(quick: bool, attention: str = "full", loop_widths: tuple[int, ...] = ()) -> dict[str, tuple[ModelConfig, RSSMConfig]]:
    """The looped model, and narrower ones (looped-dN, N wide) for the loop's own parameter curve; the
    fixed-depth family it is measured against (same width and heads unless named wide); the
    DreamerV3-style RSSM; and the deterministic GRU world model (the RSSM without its stochastic
    state, encoding its own predictions in imagination as the looped model does). Every entity model
    gets the same `attention` (ATTENTION)."""
    shape = ATTENTION[attention]
    suite = {"looped": (ModelConfig(kind="looped", mu_rec=4.0, **shape), RSSMConfig())}
    for width in sorted(set(loop_widths), reverse=True):
        suite[f"looped-d{width}"] = (ModelConfig(kind="looped", mu_rec=4.0, d=width, **shape), RSSMConfig())
    for n in (1, 4, 8) if quick else (1, 2, 4, 8, 16):
        suite[f"deep-{n}"] = (ModelConfig(kind="deep", n_deep=n, **shape), RSSMConfig())
    if not quick:
        suite["deep-4-wide"] = (ModelConfig(kind="deep", n_deep=4, d=128, **shape), RSSMConfig())
    suite["rssm"] = (ModelConfig(kind="rssm"), RSSMConfig())
    if not quick:
        suite["gru"] = (ModelConfig(kind="rssm"), RSSMConfig(stoch=0))
        # the recurrent baselines at about the looped model's parameters (184k against 185k and 192k on
        # 5 balls): their defaults are 4-8x larger, which flatters them in a comparison at equal size
        suite["rssm-eq"] = (ModelConfig(kind="rssm"), RSSMConfig(deter=96, hidden=96, stoch=8, classes=8))
        suite["gru-eq"] = (ModelConfig(kind="rssm"), RSSMConfig(deter=128, hidden=128, stoch=0))
    return suite


def family(name: str) -> str:
    """Models of one family share the tuned learning rate: looped, deep, rssm or gru."""
    return name.split("-")[0]


# the member of each family that the learning-rate sweep trains (deep-4 matches the looped compute)
FAMILY_REPRESENTATIVE = {"looped": "looped", "deep": "deep-4", "rssm": "rssm", "gru": "gru"}


@dataclass
class BenchConfig:
    """Train and score the looped model against fixed-depth transformers, the RSSM and floors."""

    out: str = "results/bench"
    """Folder for results.jsonl, table.md, findings.md and the plots (runs go to OUT/runs)."""
    worlds: tuple[str, ...] = ("balls", "chain")
    """Worlds to benchmark: built-in regimes (balls, cradle, chain, mixed, rail), the same from frames
    (balls-pixels), or any Gymnasium id (CartPole-v1, Pendulum-v1, HalfCheetah-v5)."""
    models: tuple[str, ...] = ()
    """Subset of the model suite to run (e.g. looped deep-4 rssm); empty runs all of it."""
    pixel_size: int = 32
    """Frame side for pixel worlds."""
    max_episode_steps: int = 200
    """Episode cap for Gymnasium worlds (their own limits, e.g. 1000 for MuJoCo, make data slow)."""
    n_bodies: int = 5
    """Bodies per world."""
    rail_radius: float = 0.0
    """Disc radius of the rail world (0: its default, 0.01); 32 discs need 0.005 to leave gaps between
    their runs. Other worlds ignore it."""
    attention: str = "full"
    """Attention of every entity model, looped and deep alike: "full", or "local" (each body attends to
    its nearest bodies, a graph rebuilt every step: the depth study's setting, where an impulse through
    k bodies needs about k passes). Local needs body positions: the built-in worlds, from state."""
    loop_widths: tuple[int, ...] = ()
    """Also train looped models of these widths (looped-dN; the looped model is 64 wide), the loop's
    own parameter curve: a narrower loop spends fewer parameters on the same passes. Each width must be
    a multiple of the 4 attention heads."""
    episodes: int = 300
    """Episodes collected per world."""
    seeds: int = 3
    """Training seeds per model (the spread is reported)."""
    steps: int = 500
    """Gradient steps per model in the equal-steps currency."""
    minutes: float = 1.25
    """Training minutes per model in the equal-wall-clock currency."""
    budgets: tuple[str, ...] = ("steps", "wallclock")
    """Currencies to match models in: steps, wallclock, converged."""
    converge_tolerance: float = 0.02
    """converged budget: a model has converged when its last fifth of training improved validation
    error by less than this fraction."""
    converge_cap: int = 20_000
    """converged budget: most gradient steps per model (a model still improving there is reported so)."""
    converge_eval_every: int = 250
    """converged budget: validate every this many steps (the curve the rule reads)."""
    converge_ema: float = 0.0
    """converged budget: judge convergence on a moving average of the weights with this decay per
    step (TrainConfig.plateau_ema, e.g. 0.998), whose curve is not fooled by the noise of the peak
    learning rate; 0: on the live weights."""
    lrs: tuple[float, ...] = (1e-3, 2e-3, 4e-3)
    """Learning rates tried per model family (seed 0, equal steps); the best horizon-10 validation
    error decides. One value skips the sweep."""
    tune_each_world: bool = False
    """Sweep the learning rates on every world and use each world's own best (costs one sweep per
    world); by default the first world's winners are used everywhere, which can pick a rate that
    diverges on another world."""
    tune_each_model: bool = False
    """Sweep the learning rates for every model on its own instead of once per family (one sweep per
    model): a family's rate is tuned on one member (deep-4) and can be too high for a wider or deeper
    one. tuning.json is then keyed by model."""
    horizon: int = 50
    """Longest open-loop horizon scored."""
    test_depths: tuple[int, ...] = (1, 2, 4, 8, 12, 16)
    """Test-time iteration counts for the iterative-depth curve of the looped model."""
    workers: int = 2
    """Training processes run at once (one thread each)."""
    speed_seconds: float = 1.0
    """Seconds each imagination-speed figure is measured for (per model and batch size, after a
    warm-up); longer is steadier on a busy machine, shorter only for smoke runs."""
    quick: bool = False
    """Reduced suite (one world, one seed, five models, short budgets) that finishes in minutes."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""
    progress: bool = True
    """Show progress bars."""
    report_only: bool = False
    """Only rewrite table.md, findings.md and the plots from the results.jsonl already in --out."""


def resolve(cfg: BenchConfig) -> BenchConfig:
    if cfg.quick:
        cfg = replace(cfg, worlds=cfg.worlds[:1], seeds=1, steps=min(cfg.steps, 120), minutes=min(cfg.minutes, 0.4),
                      episodes=min(cfg.episodes, 60), test_depths=(1, 2, 4, 8))
    for world in cfg.worlds:
        world_source(world, cfg)  # raises on unknown built-in names
    if cfg.attention not in ATTENTION:
        raise LoopWMError(f"unknown --attention {cfg.attention!r}: use {' or '.join(ATTENTION)}")
    if cfg.attention != "full":
        without = [w for w in cfg.worlds if w not in WORLD_IDS]
        if without:
            raise LoopWMError(f"--attention {cfg.attention} needs body positions, which {', '.join(without)} do not "
                              f"give: use it on the built-in worlds ({', '.join(WORLD_IDS)}) from state, or --attention full")
    heads = ModelConfig().n_heads
    if any(w < heads or w % heads for w in cfg.loop_widths):
        raise LoopWMError(f"--loop-widths {' '.join(map(str, cfg.loop_widths))}: each width must be a positive multiple "
                          f"of the {heads} attention heads (e.g. 16, 24, 32)")
    if not (cfg.rail_radius >= 0 and math.isfinite(cfg.rail_radius)):
        raise LoopWMError(f"--rail-radius must be 0 (the world's default) or a positive radius, got {cfg.rail_radius}")
    suite = model_suite(cfg.quick, cfg.attention, cfg.loop_widths)
    unknown = [m for m in cfg.models if m not in suite]
    if unknown:
        raise LoopWMError(f"unknown model(s) {unknown}: choose from {', '.join(suite)}"
                          + ("" if cfg.loop_widths else " (looped-dN needs --loop-widths N)"))
    bad = [b for b in cfg.budgets if b not in BUDGETS]
    if bad or not cfg.budgets:
        raise LoopWMError(f"unknown budget(s) {bad or cfg.budgets}: use any of {', '.join(BUDGETS)}")
    if "converged" in cfg.budgets and not (0 < cfg.converge_tolerance < 1 and cfg.converge_cap >= 1
                                           and cfg.converge_eval_every >= 1):
        raise LoopWMError("the converged budget needs 0 < --converge-tolerance < 1, --converge-cap >= 1 and "
                          "--converge-eval-every >= 1")
    if not cfg.lrs or min(cfg.lrs) <= 0:
        raise LoopWMError(f"--lrs needs at least one positive learning rate, got {cfg.lrs}")
    if not (cfg.speed_seconds > 0 and math.isfinite(cfg.speed_seconds)):
        raise LoopWMError(f"--speed-seconds must be a positive number of seconds, got {cfg.speed_seconds}")
    if cfg.workers < 1 or cfg.seeds < 1 or cfg.steps < 1 or cfg.horizon < 10:
        raise LoopWMError("--workers, --seeds and --steps must be at least 1 and --horizon at least 10")
    return cfg


@torch.no_grad()
def speed(model, obs0: torch.Tensor, action: torch.Tensor, batch: int, seconds: float = 1.0) -> float:
    """Imagined environment steps per second at a batch size (each sample's step counts once)."""
    obs = obs0[None].expand(batch, *obs0.shape).contiguous()
    act = action[None].expand(batch, *action.shape).contiguous()
    state = model.initial(obs)
    for _ in range(3):
        state, _ = model.step(state, act)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        state, _ = model.step(state, act)
        n += 1
    return n * batch / (time.perf_counter() - start)


def _run_key(world: str, name: str, lr: float, seed: int) -> Path:
    # the learning rate is part of the key, so the sweep's winning run is reused, not retrained
    return Path(world) / name / f"lr{lr:g}" / f"seed{seed}"


def _run_dir(out: Path, world: str, name: str, lr: float, seed: int, budget: str) -> Path:
    return out / "runs" / _run_key(world, name, lr, seed) / budget


def _score_path(out: Path, world: str, name: str, lr: float, seed: int, budget: str) -> Path:
    # under scores/, not runs/: small JSON committed with the results, so a bench that spans several
    # sessions (or machines) keeps every finished run without its checkpoints
    return out / "scores" / _run_key(world, name, lr, seed) / f"{budget}.json"


def data_fingerprint(ds: TrajectoryDataset) -> str:
    """A short digest of a dataset's episodes (count, lengths, first and last observations): a kept
    score is reused only on the very data it was measured on."""
    h = hashlib.sha256(np.asarray(ds.lengths, dtype=np.int64).tobytes())
    for i in sorted({0, ds.episodes - 1}):
        h.update(np.ascontiguousarray(ds.episode(i)["obs"], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _train_config(job: dict) -> TrainConfig:
    budget = job["budget"]
    steps = {"steps": job["steps"], "wallclock": 10**9, "converged": job["converge_cap"]}[budget]
    return TrainConfig(data=job["data"], out=job["run_dir"], model=ModelConfig(**job["model"]),
                       rssm=RSSMConfig(**job["rssm"]), lr=job["lr"], seed=job["seed"], steps=steps,
                       minutes=job["minutes"] if budget == "wallclock" else 0.0,
                       until_plateau=job["converge_tolerance"] if budget == "converged" else 0.0,
                       plateau_ema=job["converge_ema"] if budget == "converged" else 0.0,
                       eval_every=job["converge_eval_every"] if budget == "converged" else 10**9,
                       ckpt_every=500, progress=False, device=job["device"])


def _identity(job: dict, tcfg: TrainConfig) -> dict:
    """Everything a kept score depends on: the training settings (every default included, so a
    changed default retrains), the data, and what was scored. Paths and the device are left out."""
    train_settings = {k: v for k, v in asdict(tcfg).items() if k not in ("data", "out", "progress", "device")}
    identity = {"format": 1, "world": job["world"], "data": job["data_fingerprint"], "train": train_settings,
                "horizon": job["horizon"], "test_depths": job["test_depths"], "context": CONTEXT}
    return json.loads(json.dumps(identity))  # as it reads back from the file (tuples become lists)


def _same_run(saved: dict, now: dict) -> bool:
    """Whether a kept score's identity stands for this job: everything equal, except training
    settings added to loopwm since the score was kept, which match at their defaults (the rule
    `loopwm train` applies when resuming a run)."""
    def rest(identity):
        return {k: v for k, v in identity.items() if k != "train"}

    default = json.loads(json.dumps(asdict(TrainConfig())))
    return rest(saved) == rest(now) and not config_diff(saved.get("train", {}), now["train"], default)


def _train_and_score(job: dict) -> dict:
    """One training run and its open-loop scores (runs in a worker process)."""
    torch.set_num_threads(1)
    device = pick_device(job["device"])
    budget = job["budget"]
    tcfg = _train_config(job)
    identity = _identity(job, tcfg)
    kept = Path(job["score_path"])
    # a finished run's scores are kept beside the results: a re-run of the bench (after a kill, after
    # adding a model, on another machine) trains and scores nothing that has not changed
    if kept.exists():
        saved = json.loads(kept.read_text())
        if _same_run(saved.get("identity", {}), identity):  # finished before, on this data with these settings
            return {**saved["result"], "depth_errors": {int(k): v for k, v in saved["result"]["depth_errors"].items()}}
    train(tcfg)
    model, meta = load_model(job["run_dir"], device)
    records = [json.loads(x) for x in (Path(job["run_dir"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    trained = {"val_curve": [[r["step"], r["val/obs"]] for r in records if "val/obs" in r],
               # with --converge-ema: the weight average's curve, the one the plateau rule judged
               "val_avg_curve": [[r["step"], r["val_avg/obs"]] for r in records if "val_avg/obs" in r],
               "stop_reason": meta.get("stop_reason", budget), "train_samples": int(meta["step"]) * tcfg.batch_size}
    ds = TrajectoryDataset.load(job["data"])
    val = np.asarray(meta["val_episodes"])
    res = open_loop(model, ds, val, CONTEXT, job["horizon"], 256, device=device)
    if len(res.errors) < 10:  # the bench's headline is horizon 10: open_loop cut the horizon to what fits
        raise LoopWMError(f"the held-out episodes of {job['world']} are too short to score horizon 10 after {CONTEXT} "
                          f"observed steps (the longest fits {len(res.errors)}): raise --episodes or --max-episode-steps")
    depth_errors = {}
    for depth in job["test_depths"]:
        depth_errors[depth] = float(open_loop(model, ds, val, CONTEXT, 10, 256, depth=depth, device=device).errors[9])
    result = {"errors": [float(e) for e in res.errors], "iterations": float(res.iterations.mean()),
              "floors": {k: [float(x) for x in v] for k, v in res.floors.items()}, "params": model.param_count(),
              "train_steps": int(meta["step"]), "train_seconds": float(meta.get("train_seconds", 0.0)),
              "depth_errors": depth_errors}
    kept.parent.mkdir(parents=True, exist_ok=True)
    model_meta = {k: meta[k] for k in ("kind", "spec", "model")}  # enough to rebuild the model for timing
    atomic_write_text(kept, json.dumps({"identity": identity, "model_meta": model_meta,
                                        "val_episodes": [int(i) for i in meta["val_episodes"]],
                                        "result": {**result, **trained}}) + "\n")
    return {**result, **trained}


def _model_for_timing(job: dict, device) -> tuple[torch.nn.Module, list[int]]:
    """A run's architecture rebuilt from its kept score, untrained: FLOPs and speed at a fixed depth
    do not depend on the weights, and this works where the run's checkpoints are gone."""
    saved = json.loads(Path(job["score_path"]).read_text())
    return build_model(saved["model_meta"]).to(device).eval(), saved["val_episodes"]


def _run_jobs(jobs: list[dict], cfg: BenchConfig, desc: str) -> list[dict]:
    """Run jobs in `cfg.workers` processes (in this one when 1), longest first; results in job order."""
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["cost"])
    results: list[dict | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not cfg.progress, dynamic_ncols=True)
    if cfg.workers == 1:
        for i in order:
            results[i] = _train_and_score(jobs[i])
            bar.update(1)
    else:
        with worker_pool(cfg.workers) as pool:
            futures = {pool.submit(_train_and_score, jobs[i]): i for i in order}
            try:
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # fail now, not after every queued run
                raise
    bar.close()
    return results  # type: ignore[return-value]


def _cost(mcfg: ModelConfig, budget: str, cfg: BenchConfig) -> float:
    """A rough training time estimate, only to start the longest runs first."""
    if budget == "wallclock":
        return cfg.minutes * 60
    steps = cfg.converge_cap / 4 if budget == "converged" else cfg.steps
    blocks = {"looped": mcfg.mu_rec * 0.6, "deep": mcfg.n_deep, "rssm": 0.3}[mcfg.kind] * (mcfg.d / 64) ** 2
    return steps * 0.03 * (2 + blocks)


def run_bench(cfg: BenchConfig) -> Path:
    if cfg.report_only:
        print(write_reports(Path(cfg.out)))
        return Path(cfg.out)
    cfg = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    suite = {k: v for k, v in model_suite(cfg.quick, cfg.attention, cfg.loop_widths).items()
             if not cfg.models or k in cfg.models}
    same_as_before = _same_comparison(out, cfg)  # read before this run rewrites anything in out
    data = {world: world_data(cfg, world, out) for world in cfg.worlds}
    fingerprints = {world: data_fingerprint(TrajectoryDataset.load(path)) for world, path in data.items()}
    start = time.time()

    def job(world, name, lr, seed, budget):
        return {"world": world, "name": name, "lr": lr, "seed": seed, "budget": budget, "data": str(data[world]),
                "run_dir": str(_run_dir(out, world, name, lr, seed, budget)), "model": asdict(suite[name][0]),
                "score_path": str(_score_path(out, world, name, lr, seed, budget)), "data_fingerprint": fingerprints[world],
                "rssm": asdict(suite[name][1]),
                "steps": cfg.steps, "minutes": cfg.minutes, "horizon": cfg.horizon, "device": cfg.device,
                "converge_cap": cfg.converge_cap, "converge_tolerance": cfg.converge_tolerance,
                "converge_eval_every": cfg.converge_eval_every, "converge_ema": cfg.converge_ema,
                "test_depths": list(cfg.test_depths) if family(name) == "looped" and budget == cfg.budgets[0] else [],
                "cost": _cost(suite[name][0], budget, cfg)}

    # 1. the same learning-rate sweep for every family (seed 0, equal steps), on the first world or on each
    def rate_key(name: str) -> str:  # who shares a tuned rate: the family, or with --tune-each-model the model alone
        return name if cfg.tune_each_model else family(name)

    families = sorted({rate_key(n) for n in suite})
    tuned_on = list(cfg.worlds) if cfg.tune_each_world else [cfg.worlds[0]]
    try:  # what an earlier run of this folder tuned: reused below when it is the same comparison
        earlier = json.loads((out / "tuning.json").read_text()) if same_as_before else {}
    except (OSError, ValueError):
        earlier = {}
    per = "model" if cfg.tune_each_model else "family"
    tuning = _earlier_tuning(_tuning_record(earlier, per), cfg, tuned_on, families)
    if len(cfg.lrs) > 1:
        rep = {f: f if cfg.tune_each_model else
               FAMILY_REPRESENTATIVE[f] if FAMILY_REPRESENTATIVE[f] in suite else next(n for n in suite if family(n) == f)
               for f in families}
        # a family this folder already swept over the same rates keeps its rate: adding deep-16 to a finished
        # comparison must not sweep the deep family again on deep-16 and move the rate deep-1..8 trained with
        sweep = [job(w, rep[f], lr, 0, "steps") for w in tuned_on for f in families if f not in tuning[w] for lr in cfg.lrs]
        for j, r in zip(sweep, _run_jobs(sweep, cfg, "lr sweep")):
            tuning[j["world"]].setdefault(rate_key(j["name"]), {})[f"{j['lr']:g}"] = r["errors"][9]
    best_by_world = {w: {f: (float(min(t[f], key=t[f].get)) if f in t else cfg.lrs[0]) for f in families}
                     for w, t in tuning.items()}

    def lr_for(world: str, name: str) -> float:
        return best_by_world[world if cfg.tune_each_world else cfg.worlds[0]][rate_key(name)]

    summary = ({"best": best_by_world, "h10_error": tuning} if cfg.tune_each_world else
               {"best": best_by_world[cfg.worlds[0]], "h10_error": tuning[cfg.worlds[0]], "tuned_on": cfg.worlds[0]})
    summary["per"] = per
    # families (or models) an earlier run in this folder tuned and this one did not: keep their rates on record
    mine = _tuning_record(earlier, per)
    if not cfg.tune_each_world and mine.get("tuned_on") == cfg.worlds[0]:
        for key in ("best", "h10_error"):
            summary[key] = {**{f: v for f, v in mine.get(key, {}).items() if f not in families}, **summary[key]}
    other = "model" if per == "family" else "family"
    theirs = _tuning_record(earlier, other)
    if theirs:  # the other mode's rates stay on record beside these
        summary[f"per_{other}"] = {k: v for k, v in theirs.items() if not k.startswith("per_")}
    atomic_write_text(out / "tuning.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")

    # 2. every model, world, seed and budget (sweep runs with the winning rate are reused as they are)
    jobs = [job(w, n, lr_for(w, n), s, b) for w in cfg.worlds for s in range(cfg.seeds) for n in suite for b in cfg.budgets]
    results = _run_jobs(jobs, cfg, "bench")

    # 3. compute, measured side by side here once per model and world, nothing else running
    timed = {}
    for world in cfg.worlds:
        ds = TrajectoryDataset.load(data[world])
        for name in suite:
            first = next(j for j in jobs if j["world"] == world and j["name"] == name)
            model, val_episodes = _model_for_timing(first, device)
            ep = ds.episode(int(val_episodes[0]))
            obs0 = model._as_entities(torch.as_tensor(ep["obs"][0], device=device).float())
            act0 = torch.as_tensor(ep["action"][0], device=device)
            timed[(world, name)] = {"flops_per_step": count_step_flops(model, obs0, act0),
                                    "steps_per_s_b1": speed(model, obs0, act0, 1, cfg.speed_seconds),
                                    "steps_per_s_b256": speed(model, obs0, act0, 256, cfg.speed_seconds)}
            if family(name) == "looped":
                timed[(world, name, "depth_flops")] = {d: count_step_flops(model, obs0, act0, d) for d in cfg.test_depths}

    rows, depth_rows, curves = [], [], []
    for j, r in zip(jobs, results):
        t = timed[(j["world"], j["name"])]
        for h in range(1, len(r["errors"]) + 1):  # fewer when a world's held-out episodes are short
            rows.append({"model": j["name"], "world": j["world"], "seed": j["seed"], "horizon": h, "budget": j["budget"],
                         "lr": j["lr"], "error": r["errors"][h - 1], "params": r["params"], **t,
                         "iterations": r["iterations"], "train_steps": r["train_steps"], "train_seconds": r["train_seconds"],
                         "train_samples": r["train_samples"], "stop_reason": r["stop_reason"],
                         **{f"floor_{k}": v[h - 1] for k, v in r["floors"].items()}})
        curves.append({"model": j["name"], "world": j["world"], "seed": j["seed"], "budget": j["budget"], "lr": j["lr"],
                       "val_curve": r["val_curve"], "val_avg_curve": r.get("val_avg_curve", []),
                       "stop_reason": r["stop_reason"], "train_steps": r["train_steps"],
                       "train_seconds": r["train_seconds"]})
        for depth, err in r["depth_errors"].items():
            depth_rows.append({"world": j["world"], "model": j["name"], "seed": j["seed"], "depth": int(depth),
                               "error_h10": err, "flops_per_step": timed[(j["world"], j["name"], "depth_flops")][int(depth)]})
    kept = _earlier_results(out, {(j["world"], j["name"], j["seed"], j["budget"]) for j in jobs}, same_as_before)
    rows, depth_rows, curves = kept["results"] + rows, kept["depth"] + depth_rows, kept["curves"] + curves
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / "depth.jsonl", "".join(json.dumps(r) + "\n" for r in depth_rows))
    atomic_write_text(out / "curves.jsonl", "".join(json.dumps(r) + "\n" for r in curves))
    models = sorted({r["model"] for r in rows})
    atomic_write_text(out / "config.json", json.dumps({**asdict(cfg), "models": models, "kept_from_earlier": kept["models"],
                                                       "minutes_taken": round((time.time() - start) / 60, 1)}, indent=2) + "\n")
    print(write_reports(out))
    return out


# Settings that make two bench runs in one folder the same comparison: rows of runs that differ in
# any of them are never mixed into one report.
_COMPARABLE = ("n_bodies", "rail_radius", "attention", "episodes", "steps", "minutes", "converge_tolerance", "converge_cap", "converge_eval_every",
               "converge_ema", "horizon", "max_episode_steps", "pixel_size", "quick")


def _same_comparison(out: Path, cfg: BenchConfig) -> bool:
    """Whether an earlier run left results in `out` for the same comparison (_COMPARABLE), so that its
    rows and tuned rates may be kept beside this run's; says so when they may not."""
    try:
        earlier = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    now, default = asdict(cfg), asdict(BenchConfig())
    # a setting an earlier run lacks was added since; its default reproduces what that run did
    differ = [k for k in _COMPARABLE if earlier.get(k, default[k]) != now[k]]
    if differ:
        print(f"results of an earlier run in {out} differ in {', '.join(differ)}: not merged into this report")
    return not differ


def _tuning_record(earlier: dict, per: str) -> dict:
    """Of an earlier tuning.json, the record of rates tuned per family or per model (--tune-each-model):
    the file holds the last run's mode at its top level and the other mode's record under per_<mode>."""
    if not earlier:
        return {}
    return earlier if earlier.get("per", "family") == per else earlier.get(f"per_{per}", {})


def _earlier_tuning(earlier: dict, cfg: BenchConfig, tuned_on: list[str], families: list[str]) -> dict[str, dict[str, dict]]:
    """Of an earlier run's tuning.json, the learning-rate sweeps made over exactly the rates of this
    run, per world this run tunes on and family it needs: {world: {family: {lr: h10}}}."""
    errors = earlier.get("h10_error", {})
    if "tuned_on" in earlier:  # tuned on one world only
        errors = {earlier["tuned_on"]: errors}
    rates = {f"{lr:g}" for lr in cfg.lrs}
    return {w: {f: dict(errs) for f, errs in errors.get(w, {}).items()
                if f in families and isinstance(errs, dict) and set(errs) == rates}
            for w in tuned_on}


def _earlier_results(out: Path, now: set[tuple], same_comparison: bool) -> dict:
    """Rows an earlier run of this folder wrote for (world, model, seed, budget) that this run did not
    redo, so that re-running a subset of models adds to the report instead of replacing it; none
    unless the earlier run was the same comparison. Their speeds were measured in their own run, and
    config.json names them under kept_from_earlier."""
    if not same_comparison:
        return {"results": [], "depth": [], "curves": [], "models": []}

    def read(name):
        path = out / name
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    def old(r):
        return (r["world"], r["model"], r["seed"], r["budget"]) not in now

    results, curves = [r for r in read("results.jsonl") if old(r)], [r for r in read("curves.jsonl") if old(r)]
    looped_now = {(world, seed) for world, name, seed, _ in now if name == "looped"}
    depth = [r for r in read("depth.jsonl") if (r["world"], r["seed"]) not in looped_now]
    return {"results": results, "depth": depth, "curves": curves, "models": sorted({r["model"] for r in results})}


def world_data(cfg: BenchConfig, world: str, out: Path) -> Path:
    """The one dataset every model of a world trains on (collected once, reused on re-runs)."""
    src = world_source(world, cfg)
    kwargs = src.get("env_kwargs", {})
    folder = world + (f"-r{kwargs['rail_radius']:g}" if "rail_radius" in kwargs else "")  # rail-r0.005: its own data
    return collect(CollectConfig(env_id=src["env_id"], out=str(out / "data" / folder), episodes=cfg.episodes,
                                 n_bodies=src["n_bodies"], obs=src["obs"], pixel_size=src["pixel_size"],
                                 max_episode_steps=src.get("max_episode_steps"), seed=0, progress=False),
                   env_kwargs=kwargs)
