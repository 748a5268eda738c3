"""`loopwm text train`: a looped (or deep) world model over ScienceWorld text, resumable.

    loopwm text train --data data/sciworld --out runs/sciworld --minutes 30
    loopwm text train --data data/sciworld --out runs/sciworld-deep --model.kind deep

Each step draws a number of actions K (1 to `max_actions`) and a batch of training samples with K
actions after their context, runs the loop once per action, and decodes only the observation after
the last one (deferred decoding). The tokenizer is learned from the training split when a run
starts. Writes RUN/config.json (the resolved config), RUN/tokenizer.json, RUN/metrics.jsonl and
safetensors checkpoints; re-running the same command resumes from the newest intact checkpoint.
Each checkpoint records the fingerprint of the training and dev splits (corpus.fingerprint): a run
resumes only on the data it began on, and `text eval` can say when it scores a run on another
collection.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from loopwm.checkpoint import load_model, resolve_checkpoint, resume, save_checkpoint
from loopwm.text.corpus import Batcher, Encoder, Sample, all_starts, eval_starts, fingerprint, load_tokenizer, \
    load_trajectories, need_tokenizers, tokenizer_corpus, train_tokenizer
from loopwm.text.baselines import episode_hints
from loopwm.text.model import TextModelConfig, TextWorldModel, batch_hints
from loopwm.train.average import WeightAverage, check_plateau_ema
from loopwm.train.loop import _truncate_metrics, param_groups
from loopwm.train.schedule import lr_at, plateau_phase, plateaued  # the physics models' schedule
from loopwm.utils import LoopWMError, atomic_save, atomic_write_json, pick_device, read_json, seed_everything

KINDS = ("text-looped", "text-deep")


@dataclass
class TextTrainConfig:
    """Train a world model of a text world on trajectories from `loopwm text collect`."""

    data: str = "data/sciworld"
    """Text dataset folder (from loopwm text collect)."""
    out: str = "runs/sciworld"
    """Run folder (re-running the same command resumes it)."""
    model: TextModelConfig = field(default_factory=TextModelConfig)
    vocab_size: int = 2048
    """Byte-level BPE vocabulary learned from the training split."""
    split_digits: bool = True
    """One token per digit (numbers read and written digit by digit); False: digits merge like any
    other characters."""
    steps: int = 4000
    """Gradient steps (a cap when --minutes is set)."""
    minutes: float = 0.0
    """Wall-clock training budget in minutes (0: none; the steps decide)."""
    until_plateau: float = 0.0
    """Train until the dev loss stops improving, `steps` being the cap: the physics models' rule
    (`loopwm.train.schedule.plateaued`: the smoothed best of the last `plateau_window` of training not
    this fraction better than the best before it), then a cool-down over another `plateau_window`
    of the steps so far (warmup-stable-decay). A run that never plateaus cools so as to end at the
    cap, and says so (`stop_reason` in its checkpoint). 0: the cosine schedule over `steps` / `minutes`."""
    plateau_window: float = 0.2
    """Fraction of training compared with what came before it, and the cool-down's length as a
    fraction of the steps before it."""
    plateau_ema: float = 0.0
    """With --until-plateau: judge the plateau on the dev loss of a moving average of the weights
    with this decay per step (e.g. 0.998; logged as `dev_loss_avg`, kept in checkpoints), which is
    not fooled by the noise of the peak learning rate (`loopwm.train.average`); 0: the live weights."""
    batch_size: int = 32
    """Samples per step."""
    bucket: int = 8
    """Batches drawn at once (one K for all) and formed by target length: a batch is padded to its
    longest target, and ScienceWorld's run from 3 to 300 tokens, so grouping like lengths saves most
    of the decoder's work on padding. Every sample is still drawn uniformly; 1: plain random batches."""
    lr: float = 1e-3
    """Peak learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.05
    """AdamW weight decay on weight matrices."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    changed_weight: float = 1.0
    """Loss weight of the reply tokens on lines that the newest earlier reply to the same action lacks
    (a room looked at again: the door now open, the thing taken); 1 elsewhere. Those few lines are
    what a model must get from the world's state rather than copy from memory. 1: all tokens alike."""
    max_actions: int = 5
    """Most actions fed before decoding; each step draws K uniformly from 1 to this."""
    eval_every: int = 250
    """Steps between validation losses on the dev split (and checkpoints)."""
    dev_samples: int = 200
    """Dev samples of the validation loss (fixed, seeded)."""
    seed: int = 0
    """Seed of the initialisation, sampling and loop counts."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""
    progress: bool = True
    """Show a progress bar."""


RESUMABLE = {"steps", "minutes", "progress", "threads", "device", "eval_every"}
# settings added since runs were first saved: a run saved without one used this value
LEGACY_DEFAULTS = {"bucket": 1}


def checkpoint_meta(model: TextWorldModel) -> dict:
    return {"kind": f"text-{model.cfg.kind}", "model": asdict(model.cfg), "spec": {"vocab_size": model.vocab_size}}


def text_batcher(enc: Encoder, trajs: list, m: TextModelConfig, changed_weight: float = 1.0) -> Batcher:
    """The batches a model of this config reads: its window, action and reply sizes, and its hints
    (with the training loss's weights on changed lines where `changed_weight` is not 1)."""
    return Batcher(enc, trajs, m.max_context, m.max_action, m.max_target,
                   hints=episode_hints(m.hints, m.hint_replies), hint_tokens=m.hint_tokens,
                   hint_end=enc.eos if m.copy_follow or m.copy_match else None, changed_weight=changed_weight)


def build_text_model(meta: dict) -> TextWorldModel:
    if meta.get("kind") not in KINDS:
        raise LoopWMError(f"this checkpoint holds a {meta.get('kind')!r} model, not a text world model; "
                          "physics models are scored with loopwm eval")
    try:
        # a setting added since a checkpoint was written takes the value that reproduces the old model
        model = {"decoder_reads_actions": False, **meta["model"]}
        return TextWorldModel(int(meta["spec"]["vocab_size"]), TextModelConfig(**model))
    except (KeyError, TypeError, ValueError) as err:
        raise LoopWMError(f"checkpoint metadata describes a text model this loopwm cannot build ({err})") from err


def load_text_run(run: str | Path, device="cpu") -> tuple[TextWorldModel, Encoder, dict, dict]:
    """A trained text model (eval mode), its tokenizer, checkpoint metadata and training config."""
    need_tokenizers()
    path = resolve_checkpoint(run)  # once: for a run folder this checks every checkpoint's hash
    model, meta = load_model(path, device, build=build_text_model)
    run_dir = path.parent.parent
    enc = Encoder(load_tokenizer(run_dir / "tokenizer.json"))
    return model, enc, meta, read_json(run_dir / "config.json", "run config")


def _check_config(cfg: TextTrainConfig, run_dir: Path) -> None:
    path = run_dir / "config.json"
    if not path.exists():
        return
    saved = read_json(path, "run config")
    now, default = json.loads(json.dumps(asdict(cfg))), json.loads(json.dumps(asdict(TextTrainConfig())))
    # a setting added since the run began counts at its default (its tokenizer.json is what it uses)
    diff = [k for k in now if k not in RESUMABLE and saved.get(k, LEGACY_DEFAULTS.get(k, default[k])) != now[k]]
    if diff:
        raise LoopWMError(f"{run_dir} holds a text run with other settings ({', '.join(diff)} differ); "
                          "use a new --out, or delete the folder to start over")


@torch.no_grad()
def mean_loss(model: TextWorldModel, batcher: Batcher, samples: list[Sample], device, batch_size: int = 32,
              **loss_kw) -> float:
    """Mean teacher-forced cross-entropy over samples (batched among those that share K; `loss_kw`
    goes to `TextWorldModel.loss`, e.g. depth or hide_state)."""
    total = 0.0
    for k in sorted({s.k for s in samples}):
        same = [s for s in samples if s.k == k]
        for lo in range(0, len(same), batch_size):
            chunk = same[lo:lo + batch_size]
            batch = {key: torch.as_tensor(v, device=device) for key, v in batcher.batch(chunk).items()}
            loss, _ = model.loss(batch["context"], batch["actions"], batch["target"], hints=batch_hints(batch), **loss_kw)
            total += float(loss) * len(chunk)
    return total / max(len(samples), 1)


def dev_loss(model: TextWorldModel, batcher: Batcher, starts: list[tuple[int, int]], k_max: int, device,
             batch_size: int = 32) -> float:
    """Mean teacher-forced cross-entropy over fixed dev samples, K cycling through 1..k_max."""
    was = model.training
    model.eval()
    samples = [Sample(i, t, j % k_max + 1) for j, (i, t) in enumerate(starts)]
    out = mean_loss(model, batcher, samples, device, batch_size)
    model.train(was)
    return out


def draw_batches(rng: np.random.Generator, pool: list[tuple[int, int]], k: int, batch_size: int, bucket: int,
                 length) -> list[list[Sample]]:
    """`bucket` batches of samples drawn uniformly (with replacement) from `pool`, grouped by
    `length(sample)`: the shortest `batch_size` form one batch, the next ones another, and so on;
    the batches come back in random order."""
    drawn = sorted((Sample(*pool[i], k) for i in rng.integers(0, len(pool), batch_size * bucket)), key=length)
    return [drawn[i * batch_size:(i + 1) * batch_size] for i in rng.permutation(bucket)]


def train_text(cfg: TextTrainConfig) -> Path:
    need_tokenizers()
    if not 1 <= cfg.max_actions <= 16:
        raise LoopWMError("--max-actions must be between 1 and 16")
    if cfg.batch_size < 1 or cfg.steps < 1 or cfg.vocab_size < 300:
        raise LoopWMError("--batch-size and --steps must be at least 1 and --vocab-size at least 300 "
                          "(a byte-level tokenizer needs 256 byte tokens and the specials)")
    if not cfg.changed_weight > 0:
        raise LoopWMError(f"--changed-weight must be positive (1: all reply tokens alike), not {cfg.changed_weight}")
    if cfg.bucket < 1:
        raise LoopWMError("--bucket must be at least 1 (1: plain random batches)")
    if not 0 <= cfg.until_plateau < 1 or not 0 < cfg.plateau_window < 1:
        raise LoopWMError("--until-plateau must be in [0, 1) (0.02: stop at less than 2% improvement) and "
                          "--plateau-window in (0, 1)")
    check_plateau_ema(cfg.plateau_ema, cfg.until_plateau)
    run_dir = Path(cfg.out)
    train_trajs = load_trajectories(cfg.data, "train")
    dev_trajs = load_trajectories(cfg.data, "dev")
    if not train_trajs:
        raise LoopWMError(f"{cfg.data} has no training trajectories; collect some with loopwm text collect")
    _check_config(cfg, run_dir)
    data_fp = {"train": fingerprint(train_trajs), "dev": fingerprint(dev_trajs)}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", asdict(cfg))
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.exists():
        tok = train_tokenizer(tokenizer_corpus(train_trajs), cfg.vocab_size, cfg.split_digits)
        atomic_save(tok_path, lambda tmp: tok.save(str(tmp)))
    enc = Encoder(load_tokenizer(tok_path))
    m = cfg.model
    batcher = text_batcher(enc, train_trajs, m, cfg.changed_weight)
    dev_batcher = text_batcher(enc, dev_trajs or train_trajs, m)
    starts = {k: all_starts(train_trajs, k) for k in range(1, cfg.max_actions + 1)}
    if not starts[cfg.max_actions]:
        raise LoopWMError(f"no training trajectory has {cfg.max_actions} actions; lower --max-actions")
    dev_fixed = eval_starts(dev_trajs or train_trajs, cfg.max_actions, cfg.dev_samples, seed=cfg.seed)

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model = TextWorldModel(enc.vocab_size, m)
    if m.numbers:
        model.set_digits(enc.token_strings())
    model = model.to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(cfg.seed)
    average = WeightAverage(model, cfg.plateau_ema) if cfg.plateau_ema > 0 else None
    meta = resume(run_dir, model, opt, rng, average=average)
    if meta and meta.get("data_fingerprint", data_fp) != data_fp:  # runs saved before fingerprints pass
        raise LoopWMError(f"{run_dir} was trained on other data than {cfg.data} holds now (fingerprints "
                          f"{meta['data_fingerprint']} then, {data_fp} now): resuming would mix two collections; "
                          "use a new --out, or point --data at the collection the run began on")
    step, seconds_before = (meta["step"], meta.get("train_seconds", 0.0)) if meta else (0, 0.0)
    # with --until-plateau: the step at which the learning rate began to cool, and why
    cooldown_from, stop_reason = (meta.get("cooldown_from"), meta.get("stop_reason", "steps")) if meta else (None, "steps")
    saved_step = step if meta else None
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, step)
    judged = "dev_loss" if average is None else "dev_loss_avg"  # the curve the plateau rule reads
    curve = [(r["step"], r[judged]) for r in map(json.loads, metrics_path.read_text().splitlines())
             if judged in r] if metrics_path.exists() else []
    from tqdm import tqdm

    budget = cfg.minutes * 60
    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc="train text", unit="step", disable=not cfg.progress, dynamic_ncols=True)

    def save() -> None:
        nonlocal saved_step
        plateau = {"cooldown_from": cooldown_from, "stop_reason": stop_reason} if cfg.until_plateau > 0 else {}
        meta = {**checkpoint_meta(model), **plateau, "numpy_rng": rng.bit_generator.state,
                "train_seconds": seconds_before + time.time() - t0, "data": cfg.data,
                "data_fingerprint": data_fp}
        save_checkpoint(run_dir, step, model, meta, opt, average=average)
        saved_step = step

    model.train()
    n_grad = m.resolved_n_grad()
    queue: list[list[Sample]] = []  # batches of the current pool, not yet trained on
    with open(metrics_path, "a", encoding="utf-8") as log:
        while step < cfg.steps:
            spent = seconds_before + time.time() - t0
            if budget > 0 and spent >= budget:
                stop_reason = "minutes"
                break
            if cfg.until_plateau > 0:
                cooldown_from, stop_reason, frac = plateau_phase(cfg, step, cooldown_from, stop_reason)
                if frac is None:
                    break
            else:
                frac = max(step / cfg.steps, spent / budget if budget > 0 else 0.0)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step, frac)
            if step % cfg.bucket == 0 or not queue:  # a fresh pool of `bucket` batches
                k = int(rng.integers(1, cfg.max_actions + 1))
                queue = draw_batches(rng, starts[k], k, cfg.batch_size, cfg.bucket, batcher.target_length)
            samples = queue.pop()
            batch = {key: torch.as_tensor(v, device=device) for key, v in batcher.batch(samples).items()}
            loss, used = model.loss(batch["context"], batch["actions"], batch["target"], n_grad=n_grad,
                                    hints=batch_hints(batch), weight=batch.get("weight"))
            if not torch.isfinite(loss):
                raise LoopWMError(f"the loss became {float(loss)} at step {step}; lower --lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if average is not None:
                average.update(model, step)
            step += 1
            bar.update(1)
            record = {"step": step, "loss": float(loss.detach()), "k": k, "iterations": float(used.float().mean()),
                      "lr": opt.param_groups[0]["lr"], "seconds": round(seconds_before + time.time() - t0, 2)}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                record["dev_loss"] = dev_loss(model, dev_batcher, dev_fixed, cfg.max_actions, device)
                if average is not None:
                    record["dev_loss_avg"] = dev_loss(average.model, dev_batcher, dev_fixed, cfg.max_actions, device)
                curve.append((step, record[judged]))
                if cfg.until_plateau > 0 and cooldown_from is None and plateaued(curve, cfg.until_plateau,
                                                                                 cfg.plateau_window):
                    cooldown_from, stop_reason = step, "plateau"
                    record["cooldown_from"] = step
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", dev=f"{record['dev_loss']:.3f}")
                save()
            log.write(json.dumps(record) + "\n")
            log.flush()
    bar.close()
    if saved_step != step:  # stopped by the clock between checkpoints
        save()
    return run_dir
