# How many of the last action's own earlier replies (its readings) reach the decoder within the hint
# budget, for a run's own batcher, on 400 Incline test samples at 5 actions (the same samples for every run).
# Usage: PYTHONPATH=src python results/text-v13-mentions/incline_readings.py DATA RUN [RUN ...]
import random, sys
import numpy as np
from loopwm.text.corpus import Sample, load_trajectories
from loopwm.text.model import SIMILAR_TAG
from loopwm.text.train import load_text_run, text_batcher

te = load_trajectories(sys.argv[1], 'test')
random.seed(0)
S = random.sample([(i, t) for i, x in enumerate(te) if x.type == 'Incline' for t in range(len(x.actions) - 4)], 400)
for run in sys.argv[2:]:
    model, enc, _, _ = load_text_run(run)
    b = text_batcher(enc, te, model.cfg)
    own = np.array([sum(tag < SIMILAR_TAG for tag, _ in b.hint_ids(Sample(i, t, 5))) for i, t in S])
    print(f"{run}: hints {model.cfg.hints}, budget {model.cfg.hint_tokens}: own earlier replies given, mean {own.mean():.1f}; "
          f"two or more {100 * (own >= 2).mean():.0f}%")
