"""The ScienceWorld text benchmark: a looped text world model against a compute-matched deep one.

Both models share the tokenizer settings, the encoder, the decoder and the data; the looped one
runs its one shared block `mu_rec` times per action, the deep one `n_deep = mu_rec` distinct blocks
once. Each trains for the same wall-clock minutes (one thread each, side by side), then both are
scored on the simulator's test variations with 1 to 5 actions before decoding, beside the
baselines of loopwm.text.baselines (copy, lookup, recall, trend), and the looped one again at other
test-time loop counts.

    loopwm text collect --out data/sciworld                       # about 20-40 minutes on 2 cores
    python scripts/text_bench.py --data data/sciworld --out results/text --minutes 40
    python scripts/text_bench.py --data data/sciworld --out results/text-v3 --until-plateau 0.02 \
        --steps 6000 --eval-every 125   # each model until it stops improving (results/text-v3)

Writes OUT/results.json (every evaluation), OUT/summary.md (the paper's table layout, the Step 1..5
table, EM against loop iterations) and two plots; runs go to OUT/runs (ignored by git). Re-running
re-uses finished runs (a killed run resumes) and redoes the scoring.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from loopwm.utils import atomic_write_json, atomic_write_text, worker_pool


@dataclass
class TextBenchConfig:
    """Looped against deep text world models on ScienceWorld, with the baselines that need no training."""

    data: str = "data/sciworld"
    """Text dataset from loopwm text collect."""
    out: str = "results/text"
    """Result folder (runs go under it, ignored by git)."""
    minutes: float = 40.0
    """Training minutes per model (wall clock, one thread each, side by side)."""
    steps: int = 0
    """Gradient steps per model instead of minutes (0: the minutes decide); with --until-plateau, the cap."""
    until_plateau: float = 0.0
    """Train each model until its dev loss stops improving by this fraction (0.02), --steps being the
    cap (TextTrainConfig.until_plateau); 0: the minutes or steps decide."""
    eval_every: int = 250
    """Steps between dev losses (the plateau rule needs four in the last fifth of a run, so a smaller
    value lets it stop earlier)."""
    bucket: int = 8
    """Batches drawn at once and grouped by target length (TextTrainConfig.bucket)."""
    max_context: int = 192
    """Context tokens the models read (TextModelConfig.max_context)."""
    max_target: int = 320
    """Longest observation the models write, in tokens (TextModelConfig.max_target): longer ones are
    cut and can never match exactly."""
    copy: bool = False
    """Give both models the pointer-generator copy head (TextModelConfig.copy)."""
    state_only: bool = False
    """The decoders read only the latent state tokens (TextModelConfig.decoder_reads_context and
    decoder_reads_actions off); with --copy the pointer may still point into the context and the
    actions (copy_pool "all"), chosen by a query that has seen only the state and the reply so far."""
    numbers: bool = False
    """Give every model number features (TextModelConfig.numbers): digit tokens also carry the value
    of their number and their place in it."""
    hints: str = "none"
    """Episode hints every model's decoder reads (TextModelConfig.hints): none, replies (the last
    action's earlier replies), similar (and those to similar actions), since (and what was done since
    the newest), mentions, mentions-after or mentions-dup (and earlier lines that name what it names;
    TextModelConfig.hints says where and when) or trend (the trend baseline's reply: a model on top of
    a baseline)."""
    hint_tokens: int = 256
    """Token budget of the hints (TextModelConfig.hint_tokens)."""
    hint_window: int = 0
    """Earlier tokens of its own hint each hint token also carries (TextModelConfig.hint_window; 0: none)."""
    changed_weight: float = 1.0
    """Training loss weight of the reply lines the last reply to the same action lacked
    (TextTrainConfig.changed_weight; 1: all tokens alike)."""
    copy_follow: bool = False
    """Let the copy head continue the span it is copying (TextModelConfig.copy_follow; needs --copy)."""
    copy_match: int = 0
    """Longest span match the copy head's pointer reads (TextModelConfig.copy_match; needs --copy; 0: off)."""
    line_head: bool = False
    """Give every model the line-fit number head (TextModelConfig.line_head; needs --numbers and hints)."""
    split_digits: bool = True
    """One token per digit (False: BPE merges digits, as in the first committed run)."""
    models: list[str] = field(default_factory=lambda: ["looped", "deep"])
    """Models to train and score."""
    seed: int = 0
    """Seed of every model's initialisation, sampling and loop counts (TextTrainConfig.seed); the test
    starts scored stay the same, so runs of two seeds pair with scripts/text_paired.py."""
    mu_rec: float = 4.0
    """Mean loop count of the looped model; the deep one gets this many distinct blocks."""
    max_starts: int = 400
    """Test start points (each scored with 1 to 5 actions)."""
    state_starts: int = 200
    """Start points of each state-tracking row (`look around`, ambiguity prompts), scored at 5 actions
    (TextEvalConfig.state_starts)."""
    depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Test-time loop counts of the looped model (at 5 actions)."""
    quick: bool = False
    """A few-minute version for checking the script."""
    report_only: bool = False
    """Redraw summary.md and the plots from the evaluations already written (no training or scoring)."""


def _model_config(job: dict):
    from loopwm.text.model import TextModelConfig

    model = TextModelConfig(kind=job["kind"], mu_rec=job["mu_rec"], n_deep=max(1, round(job["mu_rec"])),
                            max_context=job["max_context"], max_target=job["max_target"], copy=job["copy"],
                            decoder_reads_context=not job["state_only"], decoder_reads_actions=not job["state_only"],
                            copy_pool="all" if job["state_only"] else "read", numbers=job["numbers"],
                            hints=job["hints"], copy_follow=job["copy_follow"], line_head=job["line_head"],
                            copy_match=job["copy_match"], hint_tokens=job["hint_tokens"],
                            hint_window=job["hint_window"])
    if job["quick"]:
        model.d, model.n_state = 32, 4
    return model


def _check(cfg: TextBenchConfig) -> None:
    """Refuse settings the models would refuse, before two workers start on them."""
    from loopwm.text.model import check_hint_kind
    from loopwm.utils import LoopWMError

    check_hint_kind(cfg.hints)
    if (cfg.copy_follow or cfg.copy_match) and not cfg.copy:
        raise LoopWMError("--copy-follow and --copy-match continue the copy head's spans: add --copy")
    if cfg.line_head and (not cfg.numbers or cfg.hints == "none"):
        raise LoopWMError("--line-head fits a line through the numbers in the hints: add --numbers and --hints replies")
    if (cfg.hint_window or cfg.hint_tokens != TextBenchConfig.hint_tokens) and cfg.hints == "none":
        raise LoopWMError("--hint-tokens and --hint-window shape the episode hints: add --hints replies (or another kind)")
    if cfg.hint_tokens < 1 or cfg.hint_window < 0 or not cfg.changed_weight > 0:
        raise LoopWMError("--hint-tokens must be at least 1, --hint-window at least 0 and --changed-weight positive")


def _train(job: dict) -> str:
    from loopwm.text.train import TextTrainConfig, train_text

    model = _model_config(job)
    train_text(TextTrainConfig(data=job["data"], out=job["run"], model=model, threads=1, progress=False,
                               minutes=0.0 if job["steps"] else job["minutes"], steps=job["steps"] or 10**7,
                               split_digits=job["split_digits"], eval_every=50 if job["quick"] else job["eval_every"], bucket=job["bucket"],
                               until_plateau=job["until_plateau"], seed=job["seed"],
                               changed_weight=job["changed_weight"]))
    return job["run"]


def _job(cfg: TextBenchConfig, kind: str, out: Path, minutes: float) -> dict:
    """What one worker needs to train one model (plain values, so it crosses into a worker process)."""
    return {"kind": kind, "mu_rec": cfg.mu_rec, "data": cfg.data, "run": str(out / "runs" / kind), "minutes": minutes,
            "steps": cfg.steps, "split_digits": cfg.split_digits, "quick": cfg.quick, "until_plateau": cfg.until_plateau,
            "max_context": cfg.max_context, "max_target": cfg.max_target, "eval_every": cfg.eval_every,
            "bucket": cfg.bucket, "copy": cfg.copy, "state_only": cfg.state_only, "numbers": cfg.numbers,
            "seed": cfg.seed, "hints": cfg.hints, "copy_follow": cfg.copy_follow, "line_head": cfg.line_head,
            "copy_match": cfg.copy_match, "hint_tokens": cfg.hint_tokens, "hint_window": cfg.hint_window,
            "changed_weight": cfg.changed_weight}


def main(cfg: TextBenchConfig) -> None:
    from loopwm.text.evaluate import TextEvalConfig, evaluate_text, format_text_table

    _check(cfg)
    out = Path(cfg.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    minutes = 1.0 if cfg.quick else cfg.minutes
    jobs = [_job(cfg, m, out, minutes) for m in cfg.models]
    if cfg.report_only:
        saved = json.loads((out / "results.json").read_text())
        results = {k: saved["models"][k] for k in sorted(saved["models"], key=lambda k: (cfg.models.index(k) if k in cfg.models else len(cfg.models), k))}
        for kind, r in results.items():
            r["train"] = _train_summary(out / "runs" / kind)
        sweep = saved["depth_sweep"]
        atomic_write_json(out / "results.json", {**saved, "models": results})
        atomic_write_text(out / "summary.md", summary(results, sweep, saved["settings"]))
        plots(results, sweep, out)
        return
    with worker_pool(min(2, len(jobs))) as pool:
        list(pool.map(_train, jobs))
    import torch

    torch.set_num_threads(2)
    starts = 20 if cfg.quick else cfg.max_starts
    results = {}
    for job in jobs:
        r = evaluate_text(TextEvalConfig(run=job["run"], max_starts=starts, state_starts=4 if cfg.quick else cfg.state_starts,
                                         out=str(out / f"eval-{job['kind']}.json")))
        r["train"] = _train_summary(Path(job["run"]))
        results[job["kind"]] = r
        print(format_text_table(r))
    sweep = {}
    if "looped" in results:
        for depth in cfg.depths:
            r = evaluate_text(TextEvalConfig(run=str(out / "runs" / "looped"), max_starts=starts, actions=[5], depth=depth, state_starts=0,
                                             out=str(out / f"eval-looped-depth{depth}.json")))
            sweep[depth] = {"overall": r["overall"], "rows": r["rows"], "iterations_per_step": r["iterations_per_step"],
                            "n_samples": r["n_samples"]}
    settings = {"minutes": minutes, "steps": cfg.steps, "split_digits": cfg.split_digits, "mu_rec": cfg.mu_rec,
                "data": cfg.data, "until_plateau": cfg.until_plateau, "max_context": cfg.max_context,
                "max_target": cfg.max_target, "bucket": cfg.bucket, "copy": cfg.copy, "state_only": cfg.state_only,
                "numbers": cfg.numbers, "seed": cfg.seed, "hints": cfg.hints, "copy_follow": cfg.copy_follow,
                "line_head": cfg.line_head, "copy_match": cfg.copy_match, "state_starts": cfg.state_starts,
                "hint_tokens": cfg.hint_tokens, "hint_window": cfg.hint_window, "changed_weight": cfg.changed_weight}
    atomic_write_json(out / "results.json", {"models": results, "depth_sweep": {str(k): v for k, v in sweep.items()},
                                             "settings": settings})
    atomic_write_text(out / "summary.md", summary(results, sweep, settings))
    plots(results, sweep, out)
    print(f"results written to {out}")


def _train_summary(run: Path) -> dict:
    from loopwm.train.schedule import plateaued  # the rule --until-plateau trains by

    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    dev = [(r["step"], r["dev_loss"]) for r in records if "dev_loss" in r]
    metas = sorted((run / "checkpoints").glob("step_*.json"))
    stop = json.loads(metas[-1].read_text()).get("stop_reason", "steps") if metas else "steps"
    cooled = next((r["cooldown_from"] for r in records if "cooldown_from" in r), None)
    # a run cooled down by --until-plateau is judged by its curve before the cool-down
    before = [(s, v) for s, v in dev if cooled is None or s <= cooled]
    return {"steps": records[-1]["step"], "seconds": records[-1]["seconds"], "dev_loss": dev, "stop_reason": stop,
            "still_improving": not plateaued(before, 0.02)}


def summary(results: dict, sweep: dict, settings: dict) -> str:
    from loopwm.text.evaluate import format_text_table

    data = next(iter(results.values()))["data"]
    try:
        simulator = json.loads((Path(data) / "manifest.json").read_text())["simulator"]
    except (OSError, KeyError, ValueError):
        simulator = "text"
    if settings.get("until_plateau"):
        budget = (f"Each model trained until its dev loss stopped improving by {settings['until_plateau']:.0%} over the "
                  f"last fifth of its run (at most {settings['steps']} steps), then cooled down; one thread each, "
                  "side by side on 2 cores.")
    elif settings.get("steps"):
        budget = f"Each model trained {settings['steps']} steps on one thread (side by side on 2 cores)."
    else:
        budget = f"Each model trained {settings['minutes']:g} wall-clock minutes on one thread (side by side on 2 cores)."
    lines = [f"# Text world benchmark: {simulator} ({data})", "", budget,
             f"Context {settings.get('max_context', 192)} tokens, observations written up to "
             f"{settings.get('max_target', 128)} tokens{'; a copy head (pointer-generator) in every model' if settings.get('copy') else ''}"
            f"{'; the decoders read only the latent state' + (' (the copy head points into the context and actions)' if settings.get('copy') else '') if settings.get('state_only') else ''}"
            f"{'; number features on digit tokens (their number value and place)' if settings.get('numbers') else ''}"
            f"{_hint_words(settings)}.",
             ""]
    for kind, r in results.items():
        t = r["train"]
        last = t["dev_loss"][-1][1] if t["dev_loss"] else float("nan")
        lines += [f"## {kind}", "", f"{t['steps']} steps in {t['seconds'] / 60:.1f} min; last dev loss {last:.3f}; "
                  f"{'still improving (its last fifth of training lowered the dev loss by more than 2%)' if t['still_improving'] else 'plateaued (the last fifth of training lowered the dev loss by less than 2%)'}"
                  f"; stopped by: {t.get('stop_reason', 'steps')}", "",
                  "```", format_text_table(r), "```", ""]
    if sweep:
        lines += ["## Looped model: test-time loop iterations per action (5 actions)", "",
                  "| iterations | EM | F1 | BLEU-4 | entity | look around EM | ambiguity EM |", "|---|---|---|---|---|---|---|"]
        for depth, s in sweep.items():
            o, rows = s["overall"], s["rows"]
            cell = lambda x: "-" if math.isnan(x) else f"{x:.1f}"  # noqa: E731 - a group with no samples
            lines.append(f"| {depth} | {cell(o['em'])} | {cell(o['f1'])} | {cell(o['bleu4'])} | {cell(o['entity'])} | "
                         f"{cell(rows['look around']['em'])} | {cell(rows['ambiguity']['em'])} |")
    return "\n".join(lines) + "\n"


def _hint_words(settings: dict) -> str:
    hints = settings.get("hints", "none")
    words = {"none": "", "replies": "; the decoders also read the last action's earlier replies (episode hints)",
             "similar": "; the decoders also read the last action's earlier replies and those to similar actions (episode hints)",
             "since": "; the decoders also read the last action's earlier replies and what was done since the newest (episode hints)",
             "mentions": "; the decoders also read the last action's earlier replies and earlier lines that name what it names (episode hints)",
             "mentions-after": "; the decoders also read the last action's earlier replies and, after them, earlier lines that name what it names (episode hints)",
             "mentions-dup": "; the decoders also read the last action's earlier replies and, where an earlier line lists identical objects it names, the lines that name them (episode hints)",
             "trend": "; the decoders also read the trend baseline's reply (a model on top of a baseline)"}.get(hints, f"; hints {hints}")
    words += "; the copy head may continue the span it copies (copy-follow)" if settings.get("copy_follow") else ""
    words += (f"; the copy head reads span matches of up to {settings['copy_match']} tokens (copy-match)"
              if settings.get("copy_match") else "")
    budget = settings.get("hint_tokens", TextBenchConfig.hint_tokens)  # results written before it was a setting: the default
    words += f"; hints within {budget} tokens" if budget != TextBenchConfig.hint_tokens else ""
    words += (f"; each hint token also reads the {settings['hint_window']} before it in its hint"
              if settings.get("hint_window") else "")
    words += (f"; training weighs the reply lines the last reply to the same action lacked {settings['changed_weight']:g}x"
              if settings.get("changed_weight", 1.0) != 1.0 else "")
    return words + ("; a line-fit head may write a number from the readings in the hints" if settings.get("line_head") else "")


def plots(results: dict, sweep: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # models in colours the baselines do not use (recall orange, trend green, copy and lookup grey)
    colours = ("tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for ax, metric, name in zip(axes, ("em", "f1", "bleu4", "entity"), ("EM", "token F1", "BLEU-4", "entity F1")):
        for i, (kind, r) in enumerate(results.items()):
            ks = sorted(r["by_actions"], key=int)
            ax.plot([int(k) for k in ks], [r["by_actions"][k]["overall"][metric] for k in ks], "o-", label=kind,
                    color=colours[i % len(colours)])
        first = next(iter(results.values()))
        ks = sorted(first["by_actions"], key=int)
        for base, style, colour in (("copy", ":", "grey"), ("lookup", "--", "grey"), ("recall", "-.", "tab:orange"),
                                    ("trend", ":", "tab:green")):
            if base in first["by_actions"][ks[0]]:  # results from before a baseline existed lack it
                ax.plot([int(k) for k in ks], [first["by_actions"][k][base][metric] for k in ks], linestyle=style,
                        color=colour, label=base)
        ax.set_xlabel("actions before decoding")
        ax.set_title(name)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("percent")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics_vs_actions.png", dpi=110)
    plt.close(fig)
    if sweep:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        depths = sorted(sweep, key=int)
        xs = [int(d) for d in depths]
        # a sweep saved before it kept its sample count was scored on the looped model's starts
        n_samples = sweep[depths[0]].get("n_samples", results.get("looped", {}).get("n_samples", "?"))
        ax.plot(xs, [sweep[d]["overall"]["em"] for d in depths], "o-", label=f"overall ({n_samples})")
        # the rows among the test starts, where there are enough of them to read (look around: about 5%)
        for row, style in (("numbers", "s--"), ("look around", "^:")):
            n = sweep[depths[0]].get("rows", {}).get(row, {}).get("n", 0)
            if n >= 50:
                ax.plot(xs, [sweep[d]["rows"][row]["em"] for d in depths], style, label=f"{row} ({n})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])  # after the scale, whose own labels would be powers of 2
        ax.minorticks_off()
        ax.set_ylim(0, 100)  # on the scale of the other plot: a point's change should look like one
        ax.set_xlabel("loop iterations per action (test time)")
        ax.set_ylabel("EM, percent (5 actions)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "em_vs_iterations.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(TextBenchConfig))
