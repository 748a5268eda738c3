# Ambiguity prompts: how many options each offers, and whether the newest mention line that lists the named
# object in a container ("(containing ...") holds as many of it. Usage: PYTHONPATH=src python results/text-v13-mentions/prompt_counts.py
import re, collections
from loopwm.text.corpus import load_trajectories, is_ambiguity
from loopwm.text.baselines import mention_lines
tr = load_trajectories('/work/data-text/sciworld36','train')
te = load_trajectories('/work/data-text/sciworld36','test')
for name, trajs in (('train', tr), ('test', te)):
    agree = total = withline = 0; nopt = collections.Counter(); verbs = collections.Counter()
    for tj in trajs:
        for i, a in enumerate(tj.actions):
            o = tj.observations[i+1]
            if not is_ambiguity(o): continue
            total += 1; verbs[a.split()[0]] += 1
            k = len(re.findall(r'^\d+:', o, re.M)); nopt[k] += 1
            # the object named: the words of the action up to ' in ' or ' to ' after the verb
            m = re.match(r'(?:move|focus on|pick up|look at|use|pour|mix|put|eat|open|close)\s+(.+?)(?:\s+(?:in|on|to|into)\s+|$)', a)
            obj = m.group(1) if m else None
            best = None
            for j, line in mention_lines(tj, i, a, 6):
                if obj and line.count(obj) >= 1 and '(containing' in line:
                    best = line.count(f'a {obj}') + line.count(f'an {obj}'); break
            if best is not None:
                withline += 1; agree += best == k
    print(name, 'prompts', total, 'options', dict(sorted(nopt.items())), 'verbs', dict(verbs.most_common(5)), 'container line', withline, 'count == options', agree)
