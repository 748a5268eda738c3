"""How often the gate of `--model.hints mentions-dup` opens: before ambiguity prompts and before every
other reply, per task type (every start of a split, 5 actions before the reply, as `text eval` scores).

    python results/text-v15-mentions-dup/dup_gate.py /work/data-text/sciworld42 --split test
"""
import argparse
from collections import Counter

from loopwm.text.baselines import names_duplicates
from loopwm.text.corpus import is_ambiguity, load_trajectories

ACTIONS = 5

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--split", default="test")
args = parser.parse_args()
seen, opened = Counter(), Counter()
for traj in load_trajectories(args.data, args.split):
    for j in range(ACTIONS, len(traj.actions) + 1):  # the reply o_j after a_j, context up to o_{j-5}
        row = "ambiguity prompts" if is_ambiguity(traj.observations[j]) else traj.type
        seen[row] += 1
        opened[row] += names_duplicates(traj, j - ACTIONS, traj.actions[j - 1])
print(f"{args.data} ({args.split}): starts where the gate opens, {ACTIONS} actions before the reply")
print(f"{'row':18s} {'starts':>7s} {'opens':>6s} {'share':>7s}")
for row in sorted(seen, key=lambda r: (r == "ambiguity prompts", r)):
    print(f"{row:18s} {seen[row]:7d} {opened[row]:6d} {100 * opened[row] / seen[row]:6.1f}%")
rest = [r for r in seen if r != "ambiguity prompts"]
n, k = sum(seen[r] for r in rest), sum(opened[r] for r in rest)
print(f"{'every other reply':18s} {n:7d} {k:6d} {100 * k / n:6.1f}%")
