"""What a text run writes on the ambiguity state starts (the sample `text eval --state-starts 200` scores):
how many prompts it starts, how many it writes exactly, and where a started prompt is wrong, how many
options it lists against the reference; the other starts' first lines, most common first.

    python results/text-v15-mentions-dup/ambiguity_starts.py results/text-v15-mentions-dup/runs/looped \
        --data /work/data-text/sciworld42 --out results/text-v15-mentions-dup/ambiguity-starts.json
"""
import argparse
import json
import re
from collections import Counter

import torch

from loopwm.text.corpus import Sample, is_ambiguity, load_trajectories, state_starts
from loopwm.text.evaluate import predict
from loopwm.text.train import load_text_run, text_batcher

ACTIONS, PER_ROW, SEED = 5, 200, 0  # as text eval scores them

parser = argparse.ArgumentParser()
parser.add_argument("run")
parser.add_argument("--data", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
torch.set_num_threads(1)
model, enc, _, _ = load_text_run(args.run)
trajs = load_trajectories(args.data, "test")
samples = [Sample(i, t, ACTIONS) for i, t in state_starts(trajs, ACTIONS, PER_ROW, SEED)["ambiguity"]]
preds, _ = predict(model, enc, text_batcher(enc, trajs, model.cfg), samples, model.cfg.resolved_eval_depth(), None, 32, "cpu")
rows = [{"action": trajs[s.traj].actions[s.t + ACTIONS - 1], "reference": trajs[s.traj].observations[s.t + ACTIONS],
         "prediction": p} for s, p in zip(samples, preds)]
with open(args.out, "w") as f:
    json.dump(rows, f, indent=1)


def options(text: str) -> int:
    return sum(bool(re.match(r"\d+:", line)) for line in text.split("\n")[1:])


def same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


started = [r for r in rows if is_ambiguity(r["prediction"])]
wrong = [r for r in started if not same(r["prediction"], r["reference"])]
print(f"{args.run}: {len(rows)} ambiguity starts; prompts started {len(started)}, exact "
      f"{sum(same(r['prediction'], r['reference']) for r in rows)}")
print(f"started but wrong: {len(wrong)}; with as many options as the reference: "
      f"{sum(options(r['prediction']) == options(r['reference']) for r in wrong)}")
print("options (reference -> written) where wrong:", ", ".join(f"{options(r['reference'])}->{options(r['prediction'])}" for r in wrong))
print("first lines where no prompt was started:")
for line, n in Counter(r["prediction"].split("\n")[0][:60] for r in rows if r not in started).most_common(6):
    print(f"  {n:4d}  {line}")
