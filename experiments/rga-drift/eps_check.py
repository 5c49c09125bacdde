"""Issue 13's first lead, checked without training: with KL(f_theta || f_p), each sample's KL is at most
log(1/eps), eps = f_p's probability of the non-poisoned classes on x_p, so lambda = exp(-alpha KL) never
falls below about eps^alpha. Prints eps on D_p and RGA's logged KL, lambda, CE(D_p) and L2 per epoch.

usage: python experiments/rga-drift/eps_check.py CELL [MAX_LENGTH]
"""
import json, math, statistics, sys, torch
from pathlib import Path
from unbackdoor.models import load_classifier
from unbackdoor.poisoned_set import load_poisoned_set
from unbackdoor.batches import Collator, TokenizedSet, predict_logits
cell = Path(sys.argv[1])  # a grid cell: <out>/<dataset>/<attack>/seed<S> with poisoned/, victim/, rga/
ps = load_poisoned_set(cell / 'poisoned')
model, tok, _ = load_classifier(str(cell / 'victim' / 'model'), 2, ps.label_names)
dp = ps.poisoned
logits = predict_logits(model, TokenizedSet(tok, dp, int(sys.argv[2]) if len(sys.argv) > 2 else 64), Collator(tok), 128)
p = torch.softmax(logits.float(), -1)
y = torch.tensor([r['label'] for r in dp])
eps = 1 - p[torch.arange(len(dp)), y]
cap = torch.log(1 / eps)
print('D_p rows', len(dp), 'eps mean', eps.mean().item(), 'median', eps.median().item())
print('log(1/eps): mean', cap.mean().item(), 'min', cap.min().item(), 'max', cap.max().item())
print('lambda floor exp(-2*mean cap)', math.exp(-2 * cap.mean().item()))
log = [json.loads(l) for l in open(cell / 'rga' / 'loss_log.jsonl')]
by = {}
for r in log:
    by.setdefault(r['epoch'], []).append((r['kl'], r['lambda'], r['ce_p'], r.get('l2', 0)))
for e, v in sorted(by.items()):
    print(e, 'kl %.3f lambda %.2e ce_p %.3f l2 %.3f' % tuple(statistics.fmean(x[i] for x in v) for i in range(4)))
