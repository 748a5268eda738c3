# What reaches the decoder within the hint budget, for a run's own batcher: the last action's own earlier
# replies and the mention lines (tags from SIMILAR_TAG on), on 400 Incline test samples and on every test
# sample whose reply is an ambiguity prompt, at 5 actions (the same samples for every run).
# Usage: PYTHONPATH=src python results/text-v14-mentions-after/hint_counts.py DATA RUN [RUN ...]
import random
import sys

import numpy as np

from loopwm.text.corpus import Sample, load_trajectories
from loopwm.text.model import SIMILAR_TAG
from loopwm.text.train import load_text_run, text_batcher

te = load_trajectories(sys.argv[1], "test")
random.seed(0)
incline = random.sample([(i, t) for i, x in enumerate(te) if x.type == "Incline" for t in range(len(x.actions) - 4)], 400)
prompts = [(i, t) for i, x in enumerate(te) for t in range(len(x.actions) - 4)
           if x.observations[t + 5].startswith("Ambiguous request")]
for run in sys.argv[2:]:
    model, enc, _, _ = load_text_run(run)
    b = text_batcher(enc, te, model.cfg)
    for name, starts in (("Incline", incline), ("ambiguity", prompts)):
        tags = [[tag for tag, _ in b.hint_ids(Sample(i, t, 5))] for i, t in starts]
        own = np.array([sum(tag < SIMILAR_TAG for tag in ts) for ts in tags])
        named = np.array([sum(tag >= SIMILAR_TAG for tag in ts) for ts in tags])
        print(f"{run}: hints {model.cfg.hints}, budget {model.cfg.hint_tokens}, {name} ({len(starts)} samples): "
              f"own earlier replies given, mean {own.mean():.1f}; mention lines given, mean {named.mean():.1f}, "
              f"at least one {100 * (named >= 1).mean():.0f}%")
