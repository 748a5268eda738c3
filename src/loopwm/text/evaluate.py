"""`loopwm text eval RUN`: the paper's protocol on held-out variations, beside baselines that need no training.

    loopwm text eval runs/sciworld                 # tables: per task type, and Step 1..5
    loopwm text eval runs/sciworld --json          # one JSON object (also written to RUN/text_eval.json)
    loopwm text baselines data/sciworld            # the baselines alone, before any model is trained

From a fixed, seeded sample of start points in the test split (the simulator's own test
variations, never trained on), the model reads the context, takes K = 1..5 actions in latent space
and decodes the observation after the K-th; the scores at the largest K are the headline (the
paper's "five consecutive actions"), the others its Step 1..5 table. The baselines of
`loopwm.text.baselines` (copy, lookup, recall, trend, and trend from the model's own context window)
are scored by the same code on the same samples. Rows for `look around` steps, for the simulator's
ambiguity prompts and for replies that hold a number (readings such as "a brick approximately 53%
down the plane") are reported on their own as well as inside the totals: there the answer depends on
the state of the world, not on a template. A uniform sample holds few of them, so a second sample
of start points whose last reply is one of these rows (`--state-starts` of each) is scored as well,
at the largest number of actions (`state_rows`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NamedTuple

import torch
import tyro

from loopwm.models.exits import make_exit_rule
from loopwm.text.baselines import BASELINES, baseline_answers, lookup_table
from loopwm.text.corpus import (STATE_ROWS, Batcher, Sample, eval_starts, fingerprint, has_number, load_trajectories, state_row,
                                state_starts)
from loopwm.text.metrics import entity_pattern, score_group
from loopwm.text.model import batch_hints
from loopwm.text.train import load_text_run, mean_loss, text_batcher
from loopwm.utils import LoopWMError, atomic_write_json, atomic_write_text, pick_device

METRICS = ("em", "f1", "bleu4", "entity")
ANY_ORDER_ROWS = ("ambiguity",)  # rows of prompts that list options: also matched in any order (em_any_order)


@dataclass
class TextEvalConfig:
    """Score a text world model on the test variations (EM, token F1, BLEU-4, entity F1)."""

    run: Annotated[str, tyro.conf.Positional]
    """Run folder (or checkpoint JSON) from loopwm text train."""
    data: str = ""
    """Text dataset (empty: the one the run trained on)."""
    split: str = "test"
    """Split to score: test (held-out variations) or dev."""
    max_starts: int = 400
    """Start points sampled (seeded); each is scored after every number of actions (0: all)."""
    actions: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """Numbers of actions fed before decoding (the largest is the headline)."""
    depth: int = 0
    """Loop iterations per action (0: the model's own evaluation depth; the cap with an exit rule)."""
    exit: str = "fixed"
    """Exit rule: fixed, delta, accel or token-delta."""
    threshold: float = 0.05
    """The exit rule's threshold."""
    batch_size: int = 64
    """Samples decoded at once."""
    state_starts: int = 200
    """A second sample, of start points whose reply after the last action is a state-tracking row (a
    `look around`, an ambiguity prompt): up to this many of each, scored at the largest number of
    actions (0: none). The uniform sample holds only a few of them."""
    seed: int = 0
    """Seed of the start-point samples."""
    json: bool = False
    """Print one JSON object instead of tables."""
    out: str = ""
    """Where to write the JSON (empty: RUN/text_eval.json)."""
    predictions: str = ""
    """Also write every reply decoded after the largest number of actions, with its reference and each
    baseline's reply, to this JSON-lines file (empty: none), for reading the errors one by one and for
    scripts/text_paired.py."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""


@dataclass
class TextBaselinesConfig:
    """Score the baselines that need no training on a text dataset: what a model must beat, known
    before one is trained. The same samples and scoring as `loopwm text eval` (whose trend-context
    column needs a model's window and is printed there only)."""

    data: Annotated[str, tyro.conf.Positional]
    """Text dataset from loopwm text collect."""
    split: str = "test"
    """Split to score: test (held-out variations) or dev."""
    max_starts: int = 400
    """Start points sampled (seeded, as text eval draws them); each is scored after every number of actions (0: all)."""
    actions: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """Numbers of actions fed before the reply (the largest is the headline)."""
    state_starts: int = 200
    """Start points whose last reply is a state-tracking row, up to this many of each (0: none), as in text eval."""
    seed: int = 0
    """Seed of the start-point samples."""
    json: bool = False
    """Print one JSON object instead of tables."""
    out: str = ""
    """Also write the JSON here (empty: nowhere)."""


def check_protocol(split: str, actions: list[int]) -> None:
    if split not in ("test", "dev"):
        raise LoopWMError(f"--split {split!r}: score on test (held-out variations) or dev")
    if not actions or min(actions) < 1:
        raise LoopWMError("--actions needs numbers of at least 1, e.g. --actions 1 2 3 4 5")


class Protocol(NamedTuple):
    """What every scoring of a dataset split shares: its trajectories, the seeded start points, the
    largest number of actions, the lookup table fitted on the training split, entity patterns, and the
    fingerprints of the scored split and the training split (corpus.fingerprint)."""

    trajs: list
    starts: list[tuple[int, int]]
    k_max: int
    table: dict[str, str]
    patterns: list
    fingerprints: dict[str, str]


def load_protocol(data, split: str, actions: list[int], max_starts: int, seed: int) -> Protocol:
    trajs = load_trajectories(data, split)
    k_max = max(actions)
    starts = eval_starts(trajs, k_max, max_starts, seed)
    if not starts:
        raise LoopWMError(f"no {split} trajectory of {data} has {k_max} actions; lower --actions")
    train = load_trajectories(data, "train")
    return Protocol(trajs, starts, k_max, lookup_table(train), [entity_pattern(t.entities) for t in trajs],
                    {split: fingerprint(trajs), "train": fingerprint(train)})


def score_state_starts(samples: list[Sample], answers: dict[str, list[str]], trajs, patterns, row: str = "") -> dict:
    """Each answerer's scores (score_group) on a sample of state-tracking starts of one row (ambiguity
    prompts are also matched with their options in any order)."""
    refs = [trajs[s.traj].observations[s.t + s.k] for s in samples]
    pats = [patterns[s.traj] for s in samples]
    return {who: score_group(a, refs, pats, any_order=row in ANY_ORDER_ROWS) for who, a in answers.items()}


def score_baselines(cfg: TextBaselinesConfig) -> dict:
    """Every baseline's scores on the dataset: at the largest number of actions per task type and row,
    overall at each number of actions, and on the state-tracking starts."""
    check_protocol(cfg.split, cfg.actions)
    trajs, starts, k_max, table, patterns, fingerprints = load_protocol(cfg.data, cfg.split, cfg.actions,
                                                                        cfg.max_starts, cfg.seed)
    by_actions = {}
    for k in sorted(set(cfg.actions)):
        samples = [Sample(i, t, k) for i, t in starts]
        answers = baseline_answers(samples, trajs, table)
        by_actions[k] = {name: score(samples, replies, trajs, patterns) for name, replies in answers.items()}
    state = {}
    for name, row_starts in state_starts(trajs, k_max, cfg.state_starts, cfg.seed).items() if cfg.state_starts else ():
        samples = [Sample(i, t, k_max) for i, t in row_starts]
        state[name] = score_state_starts(samples, baseline_answers(samples, trajs, table), trajs, patterns, name)
    result = {"data": str(cfg.data), "data_fingerprint": fingerprints, "split": cfg.split, "actions": k_max,
              "n_samples": len(starts), "baselines": by_actions[k_max], "state_rows": state,
              "by_actions": {str(k): {name: v["overall"] for name, v in got.items()} for k, got in by_actions.items()}}
    if cfg.out:
        atomic_write_json(Path(cfg.out), result)
    return result


def format_baselines_table(r: dict) -> str:
    """One row per task type and per row, EM / F1 of each baseline; then Step 1..5 EM."""
    base = r["baselines"]
    names = list(base)
    first = base[names[0]]
    w = max([14] + [len(t) + 1 for t in first["per_task"]])
    lines = [f"baselines (no training) on {r['data']}: {r['n_samples']} {r['split']} samples, {r['actions']} actions "
             "before the reply; EM / token F1 (percent)",
             f"{'type':<{w}}{'n':>5} |" + "".join(f"{n:>15}" for n in names)]

    def row(label, pick):
        cells = [pick(base[n]) for n in names]
        lines.append(f"{label:<{w}}{cells[0]['n']:>5} |" + "".join(f"{_fmt(c['em'])} /{_fmt(c['f1'])}".rjust(15) for c in cells))

    for t in first["per_task"]:
        row(t, lambda b, t=t: b["per_task"][t])
    row("overall", lambda b: b["overall"])
    for name in first["rows"]:
        row(name, lambda b, name=name: b["rows"][name])
    if r.get("state_rows"):
        lines += ["", f"state-tracking starts (their own sample, {r['actions']} actions)"]
        for name, s in r["state_rows"].items():
            lines.append(f"{name:<{w}}{s[names[0]]['n']:>5} |" + "".join(
                f"{_fmt(s[n]['em'])} /{_fmt(s[n]['f1'])}".rjust(15) for n in names))
            if "em_any_order" in s[names[0]]:  # options in any order: EM alone
                lines.append(f"{'  any order':<{w}}{'':>5} |" + "".join(f"{_fmt(s[n]['em_any_order']):>15}" for n in names))
    lines += ["", f"{'actions':<{w}}{'':>5} |" + "".join(f"{n + ' EM':>15}" for n in names)]
    for k, v in r["by_actions"].items():
        lines.append(f"{'step ' + k:<{w}}{'':>5} |" + "".join(f"{_fmt(v[n]['em']):>15}" for n in names))
    return "\n".join(lines)


def score(samples: list[Sample], predictions: list[str], trajs, patterns) -> dict:
    """Overall, per task type, and the two state-tracking rows."""
    refs = [trajs[s.traj].observations[s.t + s.k] for s in samples]
    groups: dict[str, list[int]] = defaultdict(list)
    for j, s in enumerate(samples):
        groups[trajs[s.traj].type].append(j)
    which = [state_row(trajs[s.traj], s.t, s.k) for s in samples]
    rows = {name: [j for j, w in enumerate(which) if w == name] for name in STATE_ROWS}
    rows["numbers"] = [j for j, ref in enumerate(refs) if has_number(ref)]

    def of(idx, any_order=False):
        return score_group([predictions[j] for j in idx], [refs[j] for j in idx], [patterns[samples[j].traj] for j in idx],
                           any_order)

    return {"overall": of(range(len(samples))), "per_task": {t: of(groups[t]) for t in sorted(groups)},
            "rows": {name: of(idx, name in ANY_ORDER_ROWS) for name, idx in rows.items()}}


@torch.no_grad()
def predict(model, enc, batcher: Batcher, samples: list[Sample], depth: int, exit_rule, batch_size: int, device):
    """Decoded observations and the mean loop iterations per action."""
    out, iters = [], []
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo:lo + batch_size]
        batch = {k: torch.as_tensor(v, device=device) for k, v in batcher.batch(chunk).items()}
        _, memory, used = model.imagine(batch["context"], batch["actions"], depth=depth, exit_rule=exit_rule,
                                        hints=batch_hints(batch))
        ids = model.generate(memory, enc.bos, enc.eos, model.cfg.max_target)
        out += [enc.text(row) for row in ids.tolist()]
        iters.append(used.float())
    return out, float(torch.cat(iters).mean()) if iters else float("nan")


def state_reliance(model, batcher: Batcher, samples: list[Sample], depth: int, batch_size: int, device) -> dict:
    """Teacher-forced loss on the samples as they are, and with the latent state hidden from the
    decoder. A model whose decoder can read the context and the actions may learn to predict from
    them alone; then hiding the state costs nothing and the loop is decoration."""
    if not model.reads_beyond_state:
        return {}  # the decoder reads the state alone: nothing would be left to read
    return {key: mean_loss(model, batcher, samples, device, batch_size, depth=depth, hide_state=hide)
            for key, hide in (("nll", False), ("nll_state_hidden", True))}


def evaluate_text(cfg: TextEvalConfig) -> dict:
    check_protocol(cfg.split, cfg.actions)
    device = pick_device(cfg.device)
    model, enc, meta, train_cfg = load_text_run(cfg.run, device)
    data = cfg.data or train_cfg["data"]
    trajs, starts, k_max, table, patterns, fingerprints = load_protocol(data, cfg.split, cfg.actions,
                                                                        cfg.max_starts, cfg.seed)
    trained_on = meta.get("data_fingerprint", {}).get("train")  # absent in runs saved before fingerprints
    if trained_on is not None and trained_on != fingerprints["train"]:
        print(f"loopwm: warning: {cfg.run} was trained on another collection than {data} (training split "
              f"fingerprint {trained_on}, {data} has {fingerprints['train']}); its scores do not pair with runs "
              "trained on this one", file=sys.stderr)
    m = model.cfg
    batcher = text_batcher(enc, trajs, m)
    depth = cfg.depth or m.resolved_eval_depth()
    exit_rule = None if cfg.exit == "fixed" else make_exit_rule(cfg.exit, cfg.threshold, model=model)
    if m.kind == "deep" and exit_rule is not None:
        raise LoopWMError("a deep model runs its blocks once each; exit rules apply to looped models")
    t0 = time.time()
    by_actions = {}
    for k in sorted(set(cfg.actions)):
        samples = [Sample(i, t, k) for i, t in starts]
        preds, iters = predict(model, enc, batcher, samples, depth, exit_rule, cfg.batch_size, device)
        base = baseline_answers(samples, trajs, table, batcher)
        by_actions[k] = {"model": score(samples, preds, trajs, patterns),
                         **{name: score(samples, base[name], trajs, patterns) for name in BASELINES},
                         "iterations_per_step": iters,
                         "examples": [{"task": trajs[s.traj].task, "action": trajs[s.traj].actions[s.t + k - 1],
                                       "reference": trajs[s.traj].observations[s.t + k], "prediction": p}
                                      for s, p in list(zip(samples, preds))[:5]]}
        if k == k_max:
            head_predictions, head_baselines = preds, base
    state = {}
    for name, row_starts in state_starts(trajs, k_max, cfg.state_starts, cfg.seed).items() if cfg.state_starts else ():
        samples = [Sample(i, t, k_max) for i, t in row_starts]
        preds, _ = predict(model, enc, batcher, samples, depth, exit_rule, cfg.batch_size, device)
        answers = {"model": preds, **baseline_answers(samples, trajs, table, batcher)}
        state[name] = score_state_starts(samples, answers, trajs, patterns, name)
    reliance = state_reliance(model, batcher, [Sample(i, t, k_max) for i, t in starts], depth, cfg.batch_size, device)
    head = by_actions[k_max]
    if cfg.predictions:
        lines = [json.dumps({"task": trajs[i].task, "type": trajs[i].type, "variation": trajs[i].variation,
                             "t": t, "actions": trajs[i].actions[t:t + k_max],
                             "reference": trajs[i].observations[t + k_max], "prediction": p,
                             "baselines": {name: replies[j] for name, replies in head_baselines.items()}})
                 for j, ((i, t), p) in enumerate(zip(starts, head_predictions))]
        atomic_write_text(Path(cfg.predictions), "\n".join(lines) + "\n")
    # references longer than the decoder may write can never match exactly: say how many there are
    cut = sum(len(enc.ids(trajs[i].observations[t + k_max])) + 1 > m.max_target for i, t in starts)
    result = {
        "run": str(cfg.run), "data": str(data), "data_fingerprint": fingerprints,
        "trained_on_fingerprint": trained_on, "split": cfg.split, "kind": m.kind, "actions": k_max,
        "n_samples": len(starts), "cut_references": cut, "params": model.num_params(), "depth": depth if m.kind == "looped" else m.n_deep,
        "exit_rule": cfg.exit, "threshold": cfg.threshold if exit_rule is not None else None,
        "iterations_per_step": head["iterations_per_step"],
        "overall": head["model"]["overall"], "per_task": head["model"]["per_task"], "rows": head["model"]["rows"],
        "baselines": {name: head[name] for name in BASELINES}, "state_rows": state,
        "state_reliance": reliance,
        "by_actions": {str(k): {"overall": v["model"]["overall"], **{name: v[name]["overall"] for name in BASELINES},
                                "rows": v["model"]["rows"],
                                "iterations_per_step": v["iterations_per_step"]} for k, v in by_actions.items()},
        "examples": head["examples"], "seconds": round(time.time() - t0, 1),
    }
    out = Path(cfg.out) if cfg.out else Path(cfg.run if Path(cfg.run).is_dir() else Path(cfg.run).parent.parent) / "text_eval.json"
    atomic_write_json(out, result)
    return result


def check_comparable(results: dict[str, dict]) -> None:
    """Refuse `text eval` / `text baselines` results (label -> result) that scored different numbers of
    samples, or (where they record it) different collections: a table or plot of them would set
    different test starts side by side."""
    first_key, first = next(iter(results.items()))
    for key, r in results.items():
        if r["n_samples"] != first["n_samples"] or r.get("actions") != first.get("actions"):
            raise LoopWMError(f"{key!r} scored {r['n_samples']} samples at {r.get('actions')} actions, {first_key!r} "
                              f"{first['n_samples']} at {first.get('actions')}: compare models on the same test starts")
    prints = {key: (r.get("data_fingerprint") or {}).get(r.get("split", "test")) for key, r in results.items()}
    if len({p for p in prints.values() if p}) > 1:
        raise LoopWMError(f"the files scored different collections (data fingerprints {prints}): score every model "
                          "on the same data, or keep them in separate tables")


def _fmt(x: float) -> str:
    return "  -  " if math.isnan(x) else f"{x:5.1f}"


def format_text_table(r: dict) -> str:
    """The paper's layout: one row per task type, EM / F1 / BLEU-4 / entity for the model, EM of the baselines."""
    w = max([14] + [len(t) + 1 for t in r["per_task"]])  # the name column fits the dataset's types
    base = r["baselines"]
    names = [n for n in BASELINES if n in base]  # results written before a baseline existed lack it
    widths = [max(8, len(n) + 4) for n in names]  # a column fits its name
    heads = "".join(f"{n + ' EM':>{wd}}" for n, wd in zip(names, widths))
    lines = [f"{r['kind']} text world model, {r['params']:,} parameters, {r['iterations_per_step']:.2f} loop iterations "
             f"per action; {r['n_samples']} {r['split']} samples, {r['actions']} actions before decoding (percent)"
             + (f"; {r['cut_references']} references longer than the model may write (never an exact match)"
                if r.get("cut_references") else ""),
             f"{'type':<{w}}{'n':>5} {'EM':>6}{'F1':>6}{'BLEU4':>6}{'Ent':>6} |{heads}"]

    def ems(scores: list[dict]) -> str:
        return "".join(f"{_fmt(c['em']):>{wd}}" for wd, c in zip(widths, scores))

    def row(name, s, group, key=None):
        lines.append(f"{name:<{w}}{s['n']:>5} " + "".join(f"{_fmt(s[m]):>6}" for m in METRICS)
                     + " |" + ems([base[n][group][key] if key else base[n][group] for n in names]))

    for t, s in r["per_task"].items():
        row(t, s, "per_task", t)
    row("overall", r["overall"], "overall")
    for name, s in r["rows"].items():
        row(name, s, "rows", name)
    if r.get("state_rows"):
        lines += ["", f"state-tracking starts (their own sample, {r['actions']} actions): model EM / F1 / entity, "
                      "then each baseline's EM / F1"]
        for name, s in r["state_rows"].items():
            m = s["model"]
            lines.append(f"{name:<{w}}{m['n']:>5} {_fmt(m['em'])} /{_fmt(m['f1'])} /{_fmt(m['entity'])} | "
                         + " | ".join(f"{n} {_fmt(s[n]['em'])} /{_fmt(s[n]['f1'])}" for n in names if n in s))
            if "em_any_order" in m:  # results written before the any-order match lack it
                lines.append(f"{'  any order':<{w}}{'':>5} {_fmt(m['em_any_order'])}{'':>16} | "
                             + " | ".join(f"{n} {_fmt(s[n]['em_any_order'])}" for n in names if n in s))
    if r.get("state_reliance"):
        sr = r["state_reliance"]
        lines += ["", f"teacher-forced loss {sr['nll']:.3f}; with the latent state hidden from the decoder "
                      f"{sr['nll_state_hidden']:.3f} (how much the prediction relies on the state)"]
    lines.append("")
    lines.append(f"{'actions':<8}{'EM':>6}{'F1':>6}{'BLEU4':>6}{'Ent':>6}{'iters':>7} |{heads}")
    for k, v in r["by_actions"].items():
        o = v["overall"]
        lines.append(f"{'step ' + k:<8}" + "".join(f"{_fmt(o[m]):>6}" for m in METRICS)
                     + f"{v['iterations_per_step']:>7.2f} |" + ems([v[n] for n in names]))
    return "\n".join(lines)
