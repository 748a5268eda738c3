"""Replies to an action the episode has seen answered before, in the same place: does a text model
reuse what it was shown, and does it change what changed?

A start counts as a revisit when the newest earlier reply to the reply's action (within the context
o_0 .. o_t) has the same first line as the reference: in ScienceWorld, `look around` in a room the
agent looked at before ("This room is called the hallway. ..."). Recall (that earlier reply, word for
word) is then right exactly when nothing in the room changed; a world model should also apply what
the actions in between did (a door opened, a fridge emptied). For one run, on every revisit of one
action among the test starts (or every `--every`-th):

- EM of the model and of recall;
- first line right (the model knew where it was);
- the model's reply equal to the remembered one (it copied it whole);
- lines: the share of the model's lines found in the reference, and of the remembered reply's;
- edits: of the reference's lines the remembered reply lacks (what changed), the share the model
  wrote; of those it has (what stayed), the share the model kept.

    python scripts/text_revisits.py --run RUN --out results/x/revisits-look-around.json

Writes the figures and every revisit's reference, remembered reply and prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from loopwm.utils import LoopWMError, atomic_write_json


@dataclass
class TextRevisitsConfig:
    """How a text model answers an action it has seen answered in the same place."""

    run: str = "runs/sciworld"
    """A `loopwm text train` run folder (or checkpoint)."""
    data: str = ""
    """Text dataset (default: the run's own)."""
    action: str = "look around"
    """The action whose replies are scored."""
    actions: int = 5
    """Actions fed before decoding (the paper's protocol: 5)."""
    every: int = 1
    """Score every n-th revisit (2: half of them)."""
    batch_size: int = 16
    """Samples decoded at once."""
    out: str = ""
    """JSON file to write (empty: print only)."""


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def revisits(trajs, k: int, action: str) -> list[tuple[int, int, str]]:
    """(trajectory, t, remembered reply) of every start whose reply after its k-th action answers
    `action` and whose newest earlier reply to it within o_0 .. o_t has the reference's first line."""
    from loopwm.text.corpus import all_starts, earlier_replies

    out = []
    for i, t in all_starts(trajs, k):
        traj = trajs[i]
        if traj.actions[t + k - 1] != action:
            continue
        earlier = earlier_replies(traj, t, action)  # [(step, reply)], oldest first: what recall answers from
        if earlier and first_line(earlier[-1][1]) == first_line(traj.observations[t + k]):
            out.append((i, t, earlier[-1][1]))
    return out


def line_share(text: str, reference: str) -> tuple[int, int]:
    """(lines of text found among the reference's lines, lines of text)."""
    ref = set(reference.splitlines())
    lines = text.splitlines()
    return sum(line in ref for line in lines), len(lines)


def edit_counts(prediction: str, remembered: str, reference: str) -> tuple[int, int, int, int]:
    """(changed lines written, changed lines, kept lines written, kept lines): the reference's lines
    split by whether the remembered reply has them, each counted as written when the prediction has it."""
    old, new = set(remembered.splitlines()), set(prediction.splitlines())
    lines = reference.splitlines()
    changed = [line for line in lines if line not in old]
    kept = [line for line in lines if line in old]
    return sum(line in new for line in changed), len(changed), sum(line in new for line in kept), len(kept)


def edit_figures(samples: list[dict]) -> dict:
    """Edit figures (percent) over samples with "prediction", "remembered" and "reference"."""
    counts = [edit_counts(s["prediction"], s["remembered"], s["reference"]) for s in samples]
    total = [sum(c[i] for c in counts) for i in range(4)]
    return {"changed_lines": total[1], "changed_lines_written": 100 * total[0] / max(1, total[1]),
            "kept_lines_written": 100 * total[2] / max(1, total[3])}


def figures(samples: list[dict]) -> dict:
    """Every figure (percent, and the counts) over samples with "prediction", "remembered" and
    "reference": what `main` reports, and what a written file's samples can be re-scored with."""
    n = len(samples)
    hit_pred = [line_share(s["prediction"], s["reference"]) for s in samples]
    hit_prev = [line_share(s["remembered"], s["reference"]) for s in samples]
    return {
        "revisits": n,
        "em": 100 * sum(s["prediction"] == s["reference"] for s in samples) / n,
        "recall_em": 100 * sum(s["remembered"] == s["reference"] for s in samples) / n,
        "first_line_right": 100 * sum(first_line(s["prediction"]) == first_line(s["reference"]) for s in samples) / n,
        "copied_whole": 100 * sum(s["prediction"] == s["remembered"] for s in samples) / n,
        "model_lines_in_reference": 100 * sum(h for h, _ in hit_pred) / max(1, sum(m for _, m in hit_pred)),
        "remembered_lines_in_reference": 100 * sum(h for h, _ in hit_prev) / max(1, sum(m for _, m in hit_prev)),
        **edit_figures(samples),
    }


def main(cfg: TextRevisitsConfig) -> dict:
    from loopwm.text.corpus import Sample, load_trajectories
    from loopwm.text.evaluate import predict
    from loopwm.text.train import load_text_run, text_batcher
    from loopwm.utils import pick_device

    if cfg.every < 1 or cfg.actions < 1:
        raise LoopWMError("--every and --actions must be at least 1")
    device = pick_device("auto")
    model, enc, _, train_cfg = load_text_run(cfg.run, device)
    trajs = load_trajectories(cfg.data or train_cfg["data"], "test")
    found = revisits(trajs, cfg.actions, cfg.action)[:: cfg.every]
    if not found:
        raise LoopWMError(f"no test start revisits {cfg.action!r} after {cfg.actions} actions: try another --action")
    starts = [Sample(i, t, cfg.actions) for i, t, _ in found]
    preds, _ = predict(model, enc, text_batcher(enc, trajs, model.cfg), starts, model.cfg.resolved_eval_depth(), None,
                       cfg.batch_size, device)
    refs = [trajs[i].observations[t + cfg.actions] for i, t, _ in found]
    samples = [{"task": trajs[i].task, "variation": trajs[i].variation, "t": t,
                "actions": trajs[i].actions[t:t + cfg.actions], "reference": r, "remembered": prev, "prediction": p}
               for (i, t, prev), r, p in zip(found, refs, preds)]
    result = {"run": str(cfg.run), "action": cfg.action, "actions": cfg.actions, **figures(samples), "samples": samples}
    print(f"{result['revisits']} revisits of {cfg.action!r}: EM {result['em']:.1f} (recall {result['recall_em']:.1f}); "
          f"first line right {result['first_line_right']:.1f}; copied the remembered reply whole "
          f"{result['copied_whole']:.1f}; lines in the reference: model {result['model_lines_in_reference']:.1f}, "
          f"remembered {result['remembered_lines_in_reference']:.1f}; changed lines written "
          f"{result['changed_lines_written']:.1f} (of {result['changed_lines']}), kept lines written "
          f"{result['kept_lines_written']:.1f}")
    if cfg.out:
        atomic_write_json(Path(cfg.out), result)
    return result


if __name__ == "__main__":
    try:
        main(tyro.cli(TextRevisitsConfig))
    except LoopWMError as e:
        raise SystemExit(f"error: {e}") from None
