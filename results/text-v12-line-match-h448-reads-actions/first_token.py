# P(first token = "Ambiguous") on the ambiguity state starts (test), on the seed moves that get no prompt (test) and on 120 training prompts.
# Usage: PYTHONPATH=src python results/text-v12-line-match-h448-reads-actions/first_token.py RUN DATA
import sys, numpy as np, torch
torch.set_num_threads(1)
from loopwm.text.corpus import load_trajectories, is_ambiguity, state_starts, Sample
from loopwm.text.train import load_text_run, text_batcher
from loopwm.text.model import batch_hints
run, data = sys.argv[1], sys.argv[2]
model, enc, meta, cfgd = load_text_run(run)
amb_id = enc.ids('Ambiguous request')[0]
def first_probs(trajs, ss):
    b = text_batcher(enc, trajs, model.cfg); out = []
    with torch.no_grad():
        for lo in range(0, len(ss), 16):
            batch = {k: torch.as_tensor(v) for k, v in b.batch(ss[lo:lo+16]).items()}
            _, memory, _ = model.imagine(batch['context'], batch['actions'], hints=batch_hints(batch))
            sc = model.decode(memory, batch['target'][:, :1], keys=model.copy_keys(memory) if model.cfg.copy else None,
                              history=batch['target'][:, :1])[:, 0]
            out += (sc.exp() if model.cfg.copy else sc.softmax(-1))[:, amb_id].tolist()
    return np.array(out)
te = load_trajectories(data, 'test'); tr = load_trajectories(data, 'train')
amb = [Sample(i, t, 5) for i, t in state_starts(te, 5, 200, 0)['ambiguity']]
seedmoves = [Sample(i, t, 5) for i, x in enumerate(te) for t in range(len(x.actions) - 4)
             if x.actions[t+4].startswith('move') and 'seed' in x.actions[t+4] and not is_ambiguity(x.observations[t+5])]
rng = np.random.default_rng(0)
tsa = [Sample(i, t, 5) for i, x in enumerate(tr) for t in range(len(x.actions) - 4) if is_ambiguity(x.observations[t+5])]
tsa = [tsa[j] for j in rng.permutation(len(tsa))[:120]]
for name, trajs, ss in (('test ambiguity starts', te, amb), ('test seed moves, not ambiguous', te, seedmoves), ('train prompts (120)', tr, tsa)):
    p = first_probs(trajs, ss)
    print(f"{name}: n {len(p)}, P(Ambiguous first) median {np.median(p):.3f}, 10-90% {np.percentile(p,10):.3f}-{np.percentile(p,90):.3f}, > 0.5: {(p > 0.5).sum()}")
