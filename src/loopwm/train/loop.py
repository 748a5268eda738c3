"""Training: one loop, top to bottom.

    load data -> build (or resume) model and optimiser -> repeat:
        sample windows -> observe `context` steps (teacher forcing, noisy inputs)
        -> imagine `horizon` steps (own predictions fed back) -> loss -> AdamW step
        -> log to metrics.jsonl -> validate -> checkpoint (atomic)

Re-running the same command on the same run directory resumes from its newest intact checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from loopwm.checkpoint import latest_checkpoint, resume, save_checkpoint
from loopwm.data import TrajectoryDataset, WindowIndex, decode_bounds
from loopwm.data.focus import WindowSampler, window_surprise
from loopwm.models import RSSMConfig, build_model
from loopwm.models.blocks import compile_blocks
from loopwm.models.exits import TokenDeltaExit
from loopwm.models.world_model import ModelConfig, WorldModel, WorldSpec
from loopwm.train.average import WeightAverage, check_plateau_ema
from loopwm.train.distributed import Distributed
from loopwm.train.losses import objective_loss
from loopwm.train.schedule import horizon_now, lr_at, plateau_phase, plateaued
from loopwm.utils import LoopWMError, atomic_write_json, atomic_write_text, device_label, read_json, seed_everything


@dataclass
class TrainConfig:
    """Train a looped world model on a collected dataset."""

    data: str = "data/balls"
    """Dataset folder written by `loopwm collect`."""
    out: str = "runs/balls"
    """Run directory (config.json, metrics.jsonl, checkpoints/). Re-running resumes it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model architecture (kind: looped, deep for the fixed-depth baseline, or rssm)."""
    rssm: RSSMConfig = field(default_factory=RSSMConfig)
    """RSSM baseline architecture, used when --model.kind rssm."""
    steps: int = 20_000
    """Gradient steps (an upper bound when `minutes` is set)."""
    minutes: float = 0.0
    """Wall-clock budget for training in minutes; 0 means no budget (train for `steps`)."""
    until_plateau: float = 0.0
    """Train until validation stops improving, `steps` being the cap: once the best validation
    observation loss of the last `plateau_window` of training is not this fraction better than the
    best before it (0.02: 2%), the learning rate, held at its peak until then, cools down over
    another `plateau_window` of the steps so far, and training stops (warmup-stable-decay). The
    cool-down starts at the latest at 1/1.2 of the cap, so a run that never plateaus still ends
    cooled at the cap and says so (`stop_reason` in its checkpoint). 0: the cosine schedule over
    `steps` / `minutes`."""
    plateau_window: float = 0.2
    """Fraction of training (the last fifth by default) compared with what came before it, and the
    length of the cool-down as a fraction of the steps before it."""
    plateau_ema: float = 0.0
    """With --until-plateau: judge the plateau on the validation loss of an exponential moving
    average of the weights with this decay per step (e.g. 0.998, an average over about 500 steps),
    logged as `val_avg/obs`, instead of the live weights'. At the peak learning rate the live loss
    is noisy and can look flat while a longer run still ends lower after its cool-down (a 4-block
    stack cooled at 5,184 of 9,600 steps ended 25% worse than the same stack run to 9,600,
    docs/LOG.md); the average tracks what a cool-down would reach. 0: the live weights. Costs one
    more validation pass per evaluation; the saved model is always the live (cooled) one."""
    batch_size: int = 32
    """Windows per gradient step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to injection parameters, norms, biases or embeddings)."""
    warmup: int = 200
    """Linear learning-rate warm-up steps, then cosine decay to 10%."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    context: int = 4
    """Observed (teacher-forced) steps at the start of each training window. Keep it equal to the
    evaluation context: a model trained on 2 observed steps and scored after 4 was 2x worse at
    horizon 1 in our runs (it never saw a carried state built from that many observations)."""
    horizon: int = 8
    """Open-loop imagined steps after the context, with the model's predictions fed back."""
    horizon_start: int = 0
    """Horizon curriculum: imagined steps per window for the first part of training, --horizon
    being reached only for the last `horizon_final` of it (0: --horizon throughout). Short windows
    are cheap and teach the one-step map; the long ones at the end teach the model to live with its
    own predictions. Windows are drawn at the full length in both phases (the same windows, cropped)."""
    horizon_final: float = 0.25
    """With --horizon-start: the fraction of training (by steps, or by minutes under a wall-clock
    budget) at the full --horizon."""
    step_weighting: str = "mean"
    """How the predicted steps of a window add up in the observation loss. "mean": each step's
    normalised error as it is, so over a long horizon the late steps, whose errors are several times
    the first one's, carry most of the gradient. "balanced": each step's error weighted by the
    window mean over that step's own batch-mean error (weights without gradient), so a relative
    improvement counts the same at every horizon, as in a mean of logs, while the loss keeps its
    value and scale beside the reward and continuation terms. On the 32-disc rail at horizon 10 it
    kept less of the one-step error than --horizon-start 4 did and lost most of the horizon-10 gain
    (docs/LOG.md, session 26): the curriculum is the better way to a long horizon there."""
    objective: str = "sequence"
    """"sequence": every imagined step decoded and scored; "dd": deferred decoding (roll K actions
    in latent space, decode only the last; see loopwm.train.deferred), validated the same way at K_max."""
    dd_k_max: int = 0
    """dd: the longest deferral K_max (0: --horizon)."""
    dd_interval: int = 500
    """dd: K grows by one every this many steps, K = min(K_max, 1 + step // interval)."""
    dd_consistency: float = 0.1
    """dd: weight alpha of the latent-consistency loss."""
    dd_budget: float = 0.01
    """dd: weight beta of the hinge on the latent's travel over the roll-out."""
    dd_c_max: float = 2.0
    """dd: travel allowed per step, C_max (in units of the latent's norm per token and width)."""
    obs_noise: float = 0.0
    """Std of Gaussian noise added to observed inputs, in units of each feature's std."""
    feedback_grad: bool = True
    """Backpropagate through the predicted observations fed back in imagination."""
    reward_weight: float = 1.0
    """Weight of the reward loss. In standard units, 1 weighs the reward's error like that of one
    more observed value (the observation loss being a mean over bodies x changing features)."""
    reward_units: str = "standard"
    """Units of the reward loss: "standard", units of the training rewards' standard deviation, so
    its pull is the same on every task whatever the rewards' scale, or "raw", the environment's own
    units at face value, whose pull grows with the rewards' variance (runs before 2026-12-03 used raw
    units at weight 0.1: 800x weaker on Push-v0 than on Pendulum-v1; docs/LOG.md)."""
    cont_weight: float = 0.01
    """Weight of the continuation loss."""
    depth_supervision: float = 0.0
    """Weight of the mean observation loss of the prediction decoded after EVERY loop iteration
    (looped models): rewards good predictions at every depth, which is what lets an exit rule stop
    early without losing accuracy."""
    settle_weight: float = 0.0
    """Weight of a settling penalty (looped models): each state token's relative move in the loop's last
    iteration, ||z_T - z_(T-1)|| / ||z_T||, averaged over tokens and steps. The token-delta exit rule
    stops a token when that move is small, so the penalty teaches tokens with nothing left to compute
    to stand still, while the prediction loss keeps the others moving. 0: off. Measured on the demo
    (docs/LOG.md, session 30): the exits follow the world's difficulty more closely and use half the
    iterations, at a cost in accuracy that grows with the weight."""
    settle_from: float = 0.0
    """With --settle-weight: the fraction of training (by steps, or by minutes under a wall-clock budget)
    after which the penalty applies, so the loop first learns the dynamics unhindered (0: throughout)."""
    exit_training: float = 0.0
    """Exit-aware training (looped models): in a share of the training steps (--exit-training-share),
    bodies settle one by one under the token-delta exit rule, at a threshold drawn log-uniformly
    between a tenth of this value and this value. A per-token exit rule at evaluation leaves some
    state tokens stopped early, and the next step starts from that carried state; a loop trained
    only at full depth has never seen such a state. 0: off. Measured on the 32-disc rail in three
    seeds (docs/LOG.md, session 34): worse at every fixed depth, and the exits no better for it."""
    exit_training_share: float = 0.5
    """With --exit-training: the share of training steps run with the exit rule (the others run
    their full drawn depth, so the loop still learns what late iterations compute)."""
    hard_fraction: float = 0.0
    """Share of each training batch drawn in proportion to how far a window's observations stray
    from constant-velocity extrapolation (collisions, contacts: the rare steps that need the most
    passes), the rest drawn uniformly as usual (loopwm.data.focus). 0: every window uniformly.
    Validation stays uniform, so validation losses compare across settings."""
    gate_weight: float = 1.0
    """Weight of the exit gate's loss (models built with --model.exit-gate)."""
    gate_tolerance: float = 0.02
    """The gate's target after iteration t is "stop" when no later iteration lowers that step's
    error by more than this fraction, else "continue"."""
    gate_entropy: float = 0.01
    """Weight of the paper's binary-entropy regulariser on the gate (keeps it from saturating early)."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for validation (split by episode)."""
    mmap: bool = True
    """Memory-map the dataset's shards, so resident memory holds only the pages batches touch (for
    datasets larger than memory); --no-mmap reads them in, which suits network filesystems where
    mapped files are slow or unsafe."""
    eval_every: int = 250
    """Validate every this many steps."""
    ckpt_every: int = 500
    """Checkpoint every this many steps (and at the end)."""
    seed: int = 0
    """Seed for model init, sampling and noise."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""
    threads: int = 0
    """CPU threads for torch (0: torch's default, one per core). Small models gain little from a
    second thread at small batches (docs/LOG.md): one thread each lets two runs share two cores."""
    compile: bool = False
    """Compile every transformer block with torch.compile (fuses its small kernels; costs tens of
    seconds on the first steps; measured in results/throughput)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write the metrics as TensorBoard events under OUT/tb (needs `pip install tensorboard`)."""


# settings (dotted paths) whose default changed after they were added: a saved config without one
# ran with this value
LEGACY_DEFAULTS = {"reward_units": "raw"}

RESUMABLE_FIELDS = ("steps", "minutes", "progress", "device", "eval_every", "ckpt_every", "tensorboard", "mmap", "threads",
                    "compile")


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise LoopWMError("--tensorboard needs the tensorboard package: pip install 'loopwm[tensorboard]'") from err
    return SummaryWriter(str(run_dir / "tb"))


def world_spec_from_data(ds: TrajectoryDataset, train_idx) -> WorldSpec:
    """What the model needs to know about the world, measured on the training episodes."""
    stats = ds.stats(train_idx)
    space = ds.observation_space
    F_ = ds.obs_shape[-1]

    def bound(values, reducer):
        per_feature = decode_bounds(values, "float64").reshape(-1, F_)  # (N, F): pool over bodies
        return [float(reducer(col)) if np.all(np.isfinite(col)) else None for col in per_feature.T]

    kin = ds.kinematics or {}
    act = ds.action_space
    action_low, action_high, action_start = [], [], 0
    if act["type"] == "discrete":
        action_kind, action_dim, action_start = "discrete", int(act["n"]), int(act.get("start", 0))
    else:
        action_kind, action_dim = "box", int(np.prod(act["shape"]))
        action_low = [float(x) if np.isfinite(x) else None for x in decode_bounds(act["low"], "float64").reshape(-1)]
        action_high = [float(x) if np.isfinite(x) else None for x in decode_bounds(act["high"], "float64").reshape(-1)]
    return WorldSpec(
        obs_shape=list(ds.obs_shape),
        action_kind=action_kind,
        action_dim=action_dim,
        obs_mean=[float(x) for x in stats["obs_mean"]],
        obs_std=[float(x) for x in stats["obs_std"]],
        delta_std=[float(x) for x in stats["delta_std"]],
        obs_low=bound(space["low"], np.min),
        obs_high=bound(space["high"], np.max),
        position_idx=list(kin.get("position", [])),
        velocity_idx=list(kin.get("velocity", [])),
        radius_idx=kin.get("radius"),
        dt=kin.get("dt"),
        integrates=bool(kin.get("integrates", True)),  # datasets recorded before the key: one physics step per step
        action_low=action_low,
        action_high=action_high,
        action_start=action_start,
        reward_mean=float(stats["reward_mean"]),
        reward_std=float(stats["reward_std"]) if stats["reward_std"] > 1e-8 else 1.0,
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay only weight matrices of linear layers; never the injection (a, dt, B), norms, biases, embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim >= 2 and not name.startswith("core.inject.") and "embed" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_training_settings(cfg: TrainConfig) -> None:
    if cfg.step_weighting not in ("mean", "balanced"):
        raise LoopWMError(f"unknown --step-weighting {cfg.step_weighting!r}: use mean or balanced")
    if cfg.horizon_start < 0 or cfg.horizon_start > cfg.horizon:
        raise LoopWMError(f"--horizon-start {cfg.horizon_start} must lie between 1 and --horizon {cfg.horizon} (0: no curriculum)")
    if cfg.horizon_start > 0 and not 0.0 < cfg.horizon_final <= 1.0:
        raise LoopWMError(f"--horizon-final {cfg.horizon_final} is a fraction of training: use a value in (0, 1]")
    if cfg.horizon_start > 0 and cfg.until_plateau > 0:
        raise LoopWMError("--horizon-start switches at a fraction of a known length; with --until-plateau the length is "
                          "not known in advance: use --steps or --minutes")
    if not 0.0 <= cfg.hard_fraction <= 1.0:
        raise LoopWMError(f"--hard-fraction {cfg.hard_fraction} is a share of each batch: use a value in [0, 1]")
    if cfg.settle_weight < 0:
        raise LoopWMError(f"--settle-weight {cfg.settle_weight} must be 0 (off) or positive")
    if cfg.settle_weight > 0 and (cfg.model.kind != "looped" or cfg.objective != "sequence"):
        raise LoopWMError("--settle-weight penalises the loop state's last move: use it with --model.kind looped "
                          "and --objective sequence")
    if not 0.0 <= cfg.settle_from < 1.0:
        raise LoopWMError(f"--settle-from {cfg.settle_from} is a fraction of training: use a value in [0, 1)")
    if cfg.settle_from > 0 and cfg.settle_weight == 0:
        raise LoopWMError("--settle-from says when the settling penalty starts: give it a --settle-weight too")
    if cfg.settle_from > 0 and cfg.until_plateau > 0:
        raise LoopWMError("--settle-from switches at a fraction of a known length; with --until-plateau the length is "
                          "not known in advance: use --steps or --minutes")
    if cfg.exit_training < 0 or not 0.0 < cfg.exit_training_share <= 1.0:
        raise LoopWMError(f"--exit-training {cfg.exit_training} must be 0 (off) or a positive token-delta threshold, and "
                          f"--exit-training-share {cfg.exit_training_share} a fraction in (0, 1]")
    if cfg.exit_training > 0 and cfg.model.kind != "looped":
        raise LoopWMError("--exit-training settles the loop's tokens one by one: use it with --model.kind looped")
    if cfg.objective == "dd" and (cfg.horizon_start > 0 or cfg.step_weighting != "mean"):
        raise LoopWMError("--horizon-start and --step-weighting shape the sequence objective; --objective dd has its own "
                          "schedule (--dd-interval)")


def training_exit(cfg: TrainConfig, step: int) -> TokenDeltaExit | None:
    """Exit-aware training's rule for one step, or None for a full-depth step. Drawn from the seed and
    the step alone (not the batch generator), so a resumed run draws the same and the batches are
    the ones a run without it would pick."""
    draw = np.random.default_rng([cfg.seed, step, 0xE817])
    if draw.random() >= cfg.exit_training_share:
        return None
    return TokenDeltaExit(cfg.exit_training * 10.0 ** -draw.random())  # log-uniform in [t/10, t]


def to_tensors(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


def _check_resume(run_dir: Path, cfg: TrainConfig) -> None:
    saved_path = run_dir / "config.json"
    if not saved_path.exists() or not any((run_dir / "checkpoints").glob("step_*.json")):
        return  # nothing trained yet (e.g. a first attempt refused for a bad setting): the new config stands
    saved = json.loads(saved_path.read_text())
    diff = [k for k in config_diff(saved, asdict(cfg), asdict(TrainConfig())) if k.split(".")[0] not in RESUMABLE_FIELDS]
    if diff:
        raise LoopWMError(
            f"{run_dir} holds a run with a different configuration ({', '.join(diff)} differ); "
            "use a new --out, or delete the folder to start over"
        )


def config_diff(saved: dict, now: dict, default: dict, prefix: str = "") -> list[str]:
    """Settings that differ between a saved config and the current one. A setting the saved run does
    not have (added to loopwm since) counts as equal when it is at its default value, which by
    construction reproduces the old behaviour."""
    out = []
    for key, value in now.items():
        if key not in saved:
            if value != LEGACY_DEFAULTS.get(prefix + key, default.get(key)):
                out.append(prefix + key)
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            out += config_diff(saved[key], value, default.get(key) or {}, f"{prefix}{key}.")
        elif saved[key] != value:
            out.append(prefix + key)
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a kill
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the run directory. Under torchrun, every process calls this
    (see `loopwm.train.distributed`); only rank 0 writes."""
    run_dir = Path(cfg.out)
    ddp = Distributed.from_env(cfg.device)
    try:
        return _train(cfg, run_dir, ddp)
    finally:
        ddp.close()


class _LossModule(torch.nn.Module):
    """The training objective as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.step = 0  # the deferral curriculum reads it

    def forward(self, batch: dict[str, torch.Tensor]):
        return objective_loss(self.model, batch, self.cfg, self.step)


def _train(cfg: TrainConfig, run_dir: Path, ddp: Distributed) -> Path:
    device = ddp.device
    if cfg.batch_size % ddp.world:
        raise LoopWMError(f"--batch-size {cfg.batch_size} is the global batch and must divide among {ddp.world} processes")
    check_plateau_ema(cfg.plateau_ema, cfg.until_plateau)
    check_training_settings(cfg)
    ds = TrajectoryDataset.load(cfg.data, mmap=cfg.mmap)
    train_idx, val_idx = ds.split(cfg.val_fraction, seed=cfg.seed)
    window = cfg.horizon + cfg.context
    # window indexes, not window arrays: a 10-million-step dataset would need 240 MB of rows
    train_windows = ds.window_index(train_idx, window)
    val_windows = ds.window_index(val_idx, window)
    if len(train_windows) == 0:
        raise LoopWMError(f"no training window of {window} steps fits in {cfg.data}: collect longer episodes or lower --context/--horizon")

    _check_resume(run_dir, cfg)
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", asdict(cfg))
    ddp.barrier()

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    found = latest_checkpoint(run_dir)
    # a resumed run keeps the spec it began with; a field added to WorldSpec since takes its default,
    # which reproduces the old behaviour (reward_mean 0 and reward_std 1: raw reward units)
    spec = WorldSpec(**read_json(found, "checkpoint")["spec"]) if found is not None else world_spec_from_data(ds, train_idx)
    sampler = WindowSampler(train_windows)
    if cfg.hard_fraction > 0:  # scored in units of each feature's typical one-step change (the spec's, no second pass)
        surprise = window_surprise(ds, train_windows, np.asarray(spec.delta_std))
        sampler = WindowSampler(train_windows, surprise, cfg.hard_fraction)
    if cfg.objective not in ("sequence", "dd"):
        raise LoopWMError(f"unknown --objective {cfg.objective!r}: use sequence or dd (deferred decoding)")
    if cfg.reward_units not in ("raw", "standard"):
        raise LoopWMError(f"unknown --reward-units {cfg.reward_units!r}: use raw (the environment's units) or standard")
    if cfg.objective == "dd" and cfg.model.kind == "rssm":
        raise LoopWMError("--objective dd trains the looped or deep world model; the RSSM keeps its own objective")
    model_cfg = replace(cfg.model, consistency_head=True) if cfg.objective == "dd" else cfg.model
    model = build_model(spec, model_cfg, cfg.rssm).to(device)
    if cfg.depth_supervision > 0:
        if cfg.model.kind != "looped":
            raise LoopWMError("--depth-supervision weights every loop iteration: use it with --model.kind looped")
        model.supervise_every_iteration = True
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(cfg.seed)
    step, elapsed_before = 0, 0.0
    if ddp.main:
        for stale in (run_dir / "checkpoints").glob(".*.tmp"):
            stale.unlink()  # a temp file left by a killed write; the checkpoint it was for never counted
    average = WeightAverage(model, cfg.plateau_ema) if cfg.plateau_ema > 0 else None
    meta = resume(run_dir, model, opt, rng, checkpoint=found, average=average)
    if meta is not None:
        step, elapsed_before = meta["step"], meta.get("train_seconds", 0.0)
        cooldown_from, stop_reason = meta.get("cooldown_from"), meta.get("stop_reason", "steps")
    else:
        # with --until-plateau: the step at which the learning rate began to cool, and why
        cooldown_from, stop_reason = None, "steps"
    curve: list[tuple[int, float]] = []
    where = device_label(device)  # recorded in each checkpoint: where the latest stretch of training ran

    def meta_now() -> dict:
        plateau = {"cooldown_from": cooldown_from, "stop_reason": stop_reason} if cfg.until_plateau > 0 else {}
        return {**model.checkpoint_meta(), **plateau, "numpy_rng": rng.bit_generator.state,
                "train_seconds": elapsed_before + (time.time() - t0),
                "data": str(cfg.data), "env_id": ds.env_id, "env_kwargs": ds.env_kwargs, "val_episodes": [int(i) for i in val_idx],
                "device": where}

    metrics_path = run_dir / "metrics.jsonl"
    judged = "val/obs" if average is None else "val_avg/obs"  # the curve the plateau rule reads
    if ddp.main:
        _truncate_metrics(metrics_path, step)  # drop records written after the checkpoint we resume from
        if cfg.until_plateau > 0 and metrics_path.exists():  # the validation curve so far
            records = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
            curve = [(r["step"], r[judged]) for r in records if judged in r]
    if cfg.compile:
        compile_blocks(model)
    objective = _LossModule(model, cfg)
    runner = ddp.wrap(objective)
    budget_s = cfg.minutes * 60.0
    t0 = time.time()
    board = _tensorboard_writer(run_dir) if cfg.tensorboard and ddp.main else None
    show = cfg.progress and ddp.main
    if budget_s > 0:  # a wall-clock budget: the bar counts seconds, so its ETA is the real one
        bar = tqdm(total=budget_s, initial=min(elapsed_before, budget_s), desc="train", unit="s", disable=not show,
                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")
    else:
        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not show, dynamic_ncols=True)
    first_step, t_rate = step, time.time()
    model.train()
    with open(metrics_path if ddp.main else os.devnull, "a", encoding="utf-8") as log:
        while step < cfg.steps:
            spent = elapsed_before + time.time() - t0
            if ddp.agree(budget_s > 0 and spent >= budget_s):  # rank 0's clock decides for all
                stop_reason = "minutes"
                break
            if cfg.until_plateau > 0:
                cooldown_from, stop_reason, fraction = plateau_phase(cfg, step, cooldown_from, stop_reason)
                if fraction is None:
                    break
            else:
                fraction = max(step / cfg.steps, spent / budget_s if budget_s > 0 else 0.0)
            lr = lr_at(cfg, step, fraction)
            for group in opt.param_groups:
                group["lr"] = lr
            pick = sampler.draw(rng, cfg.batch_size)  # the global batch
            imagined = horizon_now(cfg, fraction)  # the curriculum reads each window's first steps only
            if cfg.settle_weight > 0:  # the model reports the loop state's last move only while it is penalised
                model.report_settling = fraction >= cfg.settle_from
            if cfg.exit_training > 0:
                model.train_exit = training_exit(cfg, step)
            batch = to_tensors(ds.batch(ddp.shard(pick)[:, :2], length=cfg.context + imagined), device)  # this process's slice
            objective.step = step
            loss, info = runner(batch)
            if not ddp.all_finite(loss):
                raise LoopWMError(f"loss became {loss.item()} at step {step}: lower --lr or check the data for outliers")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if average is not None:
                average.update(model, step)
            step += 1
            if budget_s > 0:
                bar.update(min(elapsed_before + time.time() - t0, budget_s) - bar.n)
                bar.set_postfix(step=step, steps_per_s=f"{(step - first_step) / (time.time() - t_rate):.1f}",
                                loss=f"{info['loss']:.4f}", refresh=False)
            else:
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.4f}", refresh=False)
            record = {"step": step, "time": round(elapsed_before + time.time() - t0, 3), "lr": lr,
                      "grad_norm": float(grad_norm), **{f"train/{k}": v for k, v in info.items()}}
            if cfg.horizon_start > 0:
                record["train/horizon"] = imagined
            if step % 10 == 0:
                ds.release()  # pages of mapped shards past batches read: resident memory stays bounded
            if step % cfg.eval_every == 0 and len(val_windows) > 0 and ddp.main:
                record.update(validate(model, ds, val_windows, cfg, device))
                if average is not None:
                    record.update({f"val_avg/{k[4:]}": v for k, v in
                                   validate(average.model, ds, val_windows, cfg, device).items()})
                curve.append((step, record[judged]))
                a_bar = model.max_a_bar()
                if a_bar == a_bar:  # models without a retention matrix report NaN: leave it out
                    record["loop/max_a_bar"] = a_bar
                model.train()
            if cfg.until_plateau > 0 and cooldown_from is None and step % cfg.eval_every == 0 and len(val_windows) > 0:
                # rank 0 validated; every rank starts the cool-down at the same step
                if ddp.agree(ddp.main and plateaued(curve, cfg.until_plateau, cfg.plateau_window)):
                    cooldown_from, stop_reason = step, "plateau"
                    record["train/cooldown_from"] = step
            log.write(json.dumps(record) + "\n")
            if board is not None:
                for key, value in record.items():
                    if key != "step":
                        board.add_scalar(key, value, step)
            if step % cfg.ckpt_every == 0 and ddp.main:
                log.flush()
                save_checkpoint(run_dir, step, model, meta_now(), opt, average=average)
        log.flush()
        ddp.check_in_sync(model)
        if ddp.main:
            save_checkpoint(run_dir, step, model, {**meta_now(), "world_size": ddp.world}, opt, average=average)
        ddp.barrier()  # nobody returns before the final checkpoint exists
    bar.close()
    if board is not None:
        board.close()
    return run_dir


@torch.no_grad()
def validate(model: WorldModel, ds: TrajectoryDataset, windows: WindowIndex | np.ndarray, cfg: TrainConfig, device,
             n: int = 256) -> dict:
    """Validation loss at the training depth-free evaluation setting (fixed evaluation depth)."""
    model.eval()
    spread = np.linspace(0, len(windows) - 1, min(n, len(windows))).astype(int)
    pick = windows.take(spread) if isinstance(windows, WindowIndex) else windows[spread]
    batch = to_tensors(ds.batch(pick), device)
    quiet = replace(cfg, obs_noise=0.0)
    _, info = objective_loss(model, batch, quiet, step=2**62)  # dd: at the full deferral K_max
    return {f"val/{k}": v for k, v in info.items()}
