# Scratch probe (session 39): fine-tune RUN for N steps (lr 3e-4, batch 32) with the first reply token weighted W, then P(first = "Ambiguous").
# Usage: PYTHONPATH=src python results/text-v12-line-match-h448-reads-actions/first_token_probe.py RUN W N  (data: /work/data-text/sciworld36, set inside)
import sys, copy, time, numpy as np, torch
torch.set_num_threads(1); torch.manual_seed(0)
from loopwm.text.corpus import load_trajectories, is_ambiguity, state_starts, Sample, all_starts
from loopwm.text.train import load_text_run, text_batcher, draw_batches
from loopwm.text.model import batch_hints
run, W, N = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
model, enc, meta, cfgd = load_text_run(run)
data = '/work/data-text/sciworld36'
tr = load_trajectories(data, 'train'); te = load_trajectories(data, 'test')
b = text_batcher(enc, tr, model.cfg); bt = text_batcher(enc, te, model.cfg)
amb_id = enc.ids('Ambiguous request')[0]
def first_probs(bb, ss):
    model.eval(); out = []
    with torch.no_grad():
        for lo in range(0, len(ss), 16):
            batch = {k: torch.as_tensor(v) for k, v in bb.batch(ss[lo:lo+16]).items()}
            _, memory, _ = model.imagine(batch['context'], batch['actions'], hints=batch_hints(batch))
            sc = model.decode(memory, batch['target'][:, :1], keys=model.copy_keys(memory), history=batch['target'][:, :1])[:, 0]
            out += sc.exp()[:, amb_id].tolist()
    return np.array(out)
amb = [Sample(i, t, 5) for i, t in state_starts(te, 5, 200, 0)['ambiguity']]
seedmoves = [Sample(i, t, 5) for i, x in enumerate(te) for t in range(len(x.actions) - 4)
             if x.actions[t+4].startswith('move') and 'seed' in x.actions[t+4] and not is_ambiguity(x.observations[t+5])]
rng = np.random.default_rng(1)
starts = {k: all_starts(tr, k) for k in range(1, 6)}
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
model.train(); t0 = time.time()
for step in range(N):
    k = int(rng.integers(1, 6))
    for samples in draw_batches(rng, starts[k], k, 32, 1, b.target_length):
        batch = {key: torch.as_tensor(v) for key, v in b.batch(samples).items()}
        w = torch.ones(batch['target'].shape); w[:, 1] = W
        loss, _ = model.loss(batch['context'], batch['actions'], batch['target'], n_grad=model.cfg.resolved_n_grad(), hints=batch_hints(batch), weight=w)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
print(f"W {W} steps {N} in {time.time()-t0:.0f}s")
for name, bb, ss in (('test ambiguity starts', bt, amb), ('test seed moves, no prompt', bt, seedmoves)):
    p = first_probs(bb, ss)
    print(f"  {name}: median {np.median(p):.3f}, 10-90% {np.percentile(p,10):.3f}-{np.percentile(p,90):.3f}, > 0.5: {(p > 0.5).sum()} of {len(p)}")
