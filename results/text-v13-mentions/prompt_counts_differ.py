# The test prompts whose option count differs from the count in the newest listed container line: a few, and which way.
# Usage: PYTHONPATH=src python results/text-v13-mentions/prompt_counts_differ.py
import re
from loopwm.text.corpus import load_trajectories, is_ambiguity
from loopwm.text.baselines import mention_lines
te = load_trajectories('/work/data-text/sciworld36','test')
n=0; older=newer=0
for tj in te:
    for i, a in enumerate(tj.actions):
        o = tj.observations[i+1]
        if not is_ambiguity(o): continue
        k = len(re.findall(r'^\d+:', o, re.M))
        m = re.match(r'(?:move|focus on)\s+(.+?)(?:\s+(?:in|on|to|into)\s+|$)', a); obj = m.group(1) if m else None
        for j, line in mention_lines(tj, i, a, 6):
            if obj and obj in line and '(containing' in line:
                c = line.count(f'a {obj}') + line.count(f'an {obj}')
                if c != k:
                    older += c > k; newer += c < k
                    if n < 4: n += 1; print(a, '| options', k, '| listed', c, 'steps ago', i+1-j, '|', line[:120]); print('   ', o.split('\n')[1][:120])
                break
print('listed more than options', older, 'fewer', newer)
