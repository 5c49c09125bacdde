"""The removal methods beyond the paper (finetune, fineprune, graddiff, simnpo, taskvector): each loss
against its formula on hand-made logits, and each weight operation checked on a small real model."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from test_objectives import TinyClassifier, batch, grads
from unbackdoor.config import UnlearnConfig
from unbackdoor.errors import ConfigError
from unbackdoor.objectives import build_objective
from unbackdoor.objectives.fineprune import ffn_layers
from unbackdoor.objectives.simnpo import simnpo_loss


class Table(torch.nn.Module):
    """A classifier whose logits are a parameter table, one row per input id: hand-made logits."""

    def __init__(self, rows):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(rows))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


def rows(ids, labels):
    return {"input_ids": torch.tensor(ids)[:, None], "labels": torch.tensor(labels), "idx": torch.arange(len(ids))}


LOGITS = [[2.0, 0.0], [0.5, 0.5], [-1.0, 3.0], [0.2, -0.4]]
DP, DC = rows([0, 1, 2], [1, 1, 1]), rows([3, 0], [0, 1])  # D_p with its poisoned label 1; D_c


def ce_hand(i, y):
    lg = LOGITS[i]
    return -math.log(math.exp(lg[y]) / sum(math.exp(v) for v in lg))


CE_P = [ce_hand(i, 1) for i in (0, 1, 2)]
CE_C = (ce_hand(3, 0) + ce_hand(0, 1)) / 2


def objective(method, **settings):
    return build_objective(UnlearnConfig(method=method, **({method: settings} if settings else {})))


def test_finetune_is_ce_on_dc_and_ignores_dp():
    m = Table(LOGITS)
    loss, logs = objective("finetune")(m, DP, DC)
    assert loss.item() == pytest.approx(CE_C, rel=1e-6)
    assert logs["ce_p"] == pytest.approx(sum(CE_P) / 3, rel=1e-6)  # watched, not trained on
    g = grads(m, loss)
    other = grads(m, objective("finetune")(m, rows([3, 3, 3], [0, 0, 0]), DC)[0])
    assert torch.equal(g, other) and g.view(4, 2)[1:3].abs().sum() == 0  # rows only D_p uses get no gradient


@pytest.mark.parametrize("fw,rw", [(1.0, 1.0), (0.5, 3.0)])
def test_graddiff_is_weighted_ascent_and_descent(fw, rw):
    loss, _ = objective("graddiff", forget_weight=fw, retain_weight=rw)(Table(LOGITS), DP, DC)
    assert loss.item() == pytest.approx(fw * -(sum(CE_P) / 3) + rw * CE_C, rel=1e-6)


def test_graddiff_at_its_defaults_is_ga():
    m = TinyClassifier()
    bp, bc = batch(label=2), batch(seed=2, label=1)
    assert torch.equal(grads(m, objective("graddiff")(m, bp, bc)[0]), grads(m, objective("ga")(m, bp, bc)[0]))


@pytest.mark.parametrize("beta,gamma", [(4.5, 0.0), (2.5, 0.5)])
def test_simnpo_matches_its_formula(beta, gamma):
    # -(2/beta) logsigmoid(-(beta/|y|) log pi(y|x) - gamma), |y| = 1, on the hand-computed pi.
    pi = [math.exp(-c) for c in CE_P]
    term = sum(-(2 / beta) * math.log(1 / (1 + math.exp(-(-beta * math.log(p) - gamma)))) for p in pi) / 3
    assert simnpo_loss(torch.tensor(CE_P), beta, gamma).item() == pytest.approx(term, rel=1e-6)
    loss, logs = objective("simnpo", beta=beta, gamma=gamma, forget_weight=0.5, retain_weight=2.0)(Table(LOGITS), DP, DC)
    assert logs["simnpo"] == pytest.approx(term, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * term + 2.0 * CE_C, rel=1e-6)


def test_simnpo_gradient_pushes_the_poisoned_label_down_and_fades():
    m = Table(LOGITS)
    loss, _ = objective("simnpo")(m, DP, rows([3], [0]))
    g = grads(m, loss).view(4, 2)
    assert (g[:3, 1] > 0).all() and (g[:3, 0] < 0).all()  # descent lowers the poisoned label's logit
    before = F.softmax(m.table[:3], -1)[:, 1]
    with torch.no_grad():
        m.table -= 0.1 * m.table.grad
    assert (F.softmax(m.table[:3], -1)[:, 1] < before).all()
    # The weight of the ascent, 2*sigmoid(gamma - beta*CE), fades as CE(D_p) grows (unlike GA's constant 1).
    slopes = []
    for c in (0.01, 1.0, 5.0):
        x = torch.tensor([c], requires_grad=True)
        simnpo_loss(x, 4.5).backward()
        slopes.append(-x.grad.item())
    assert slopes[0] == pytest.approx(2 * torch.sigmoid(torch.tensor(-0.045)).item(), rel=1e-5)
    assert slopes == sorted(slopes, reverse=True) and slopes[-1] < 1e-8


# ---------------------------------------------------------------- fineprune, on a small BERT

@pytest.fixture
def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=20,
                     max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg)


def token_set(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        length = 3 + i % 5
        items.append({"input_ids": torch.randint(1, 50, (length,), generator=g).tolist(),
                      "attention_mask": [1] * length, "labels": i % 2, "idx": i})
    return items


class ItemSet(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collated(items):
    from unbackdoor.batches import Collator

    return Collator(SimpleNamespace(pad_token_id=0, padding_side="right"))(items)


def test_fineprune_prunes_the_least_active_neurons_and_keeps_them_at_zero(bert):
    from unbackdoor.batches import Collator

    items = token_set()
    obj = objective("fineprune", ratio=0.25, layers=2)
    obj.data_from(ItemSet(items[:4]), ItemSet(items), Collator(SimpleNamespace(pad_token_id=0, padding_side="right")), 5)
    layers = bert.bert.encoder.layer
    # The mean activation of each FFN neuron over D_c's tokens, computed here one text at a time (no padding).
    acts = {i: [] for i in (1, 2)}
    hooks = [layers[i].intermediate.register_forward_hook(lambda m, a, out, i=i: acts[i].append(out[0]))
             for i in (1, 2)]
    bert.eval()
    with torch.no_grad():
        for it in items:
            bert(input_ids=torch.tensor([it["input_ids"]]))
    for h in hooks:
        h.remove()
    expected = {i: set(torch.cat(acts[i]).mean(0).argsort()[:5].tolist()) for i in (1, 2)}  # 25% of 20

    obj.setup(bert)
    assert obj.pruned == {f"bert.encoder.layer.{i}": sorted(expected[i]) for i in (1, 2)}
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    opt = torch.optim.AdamW(bert.parameters(), lr=1e-2, weight_decay=0.1)
    bert.train()
    for step in range(3):
        loss, _ = obj(bert, collated(items[:4]), collated(items[4 + 4 * step:8 + 4 * step]))
        # A term that reaches every weight directly: only the gradient masks keep the pruned ones at zero.
        loss = loss + 1e-3 * sum(p.sum() for p in bert.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for i in (1, 2):
        idx, rest = sorted(expected[i]), sorted(set(range(20)) - expected[i])
        up, down = layers[i].intermediate.dense, layers[i].output.dense
        assert up.weight[idx].abs().sum() == 0 and up.bias[idx].abs().sum() == 0 and down.weight[:, idx].abs().sum() == 0
        assert not torch.equal(up.weight[rest], before[f"bert.encoder.layer.{i}.intermediate.dense.weight"][rest])
    # The first layer is not pruned: its neurons move freely.
    assert (layers[0].intermediate.dense.weight.abs().sum(1) > 0).all()


def test_fineprune_refuses_a_model_without_bert_like_ffn_layers():
    with pytest.raises(ConfigError, match="no BERT-like feed-forward layers .* TinyClassifier"):
        ffn_layers(TinyClassifier())
    obj = objective("fineprune", layers=4)
    obj.data_from(None, ItemSet([]), None, 4)
    with pytest.raises(ConfigError, match="fineprune.layers=4, but the model has 3 layers"):
        from transformers import BertConfig, BertForSequenceClassification

        obj.setup(BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=3,
                                                           num_attention_heads=2, intermediate_size=8)))


# ---------------------------------------------------------------- taskvector

def test_taskvector_fine_tunes_on_dp_and_hands_over_the_negation_exactly():
    m = TinyClassifier()
    obj = objective("taskvector", scale=0.7)
    assert not obj.uses_clean
    obj.setup(m)
    victim = {n: p.detach().clone() for n, p in m.named_parameters()}
    bp = batch(label=2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.05)
    for _ in range(3):  # the loop's steps: descent on CE(D_p) with the poisoned label
        loss, logs = obj(m, bp, None)
        assert loss.item() == pytest.approx(F.cross_entropy(m(bp["input_ids"]).logits, bp["labels"]).item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned = {n: p.detach().clone() for n, p in m.named_parameters()}
    negated = {n: victim[n] - 0.7 * (tuned[n] - victim[n]) for n in victim}
    with obj.result(m, final=False):  # an evaluation mid-training sees the negation ...
        assert all(torch.equal(p, negated[n]) for n, p in m.named_parameters())
    assert all(torch.equal(p, tuned[n]) for n, p in m.named_parameters())  # ... and training goes on from theta_ft
    with obj.result(m, final=True):
        pass
    assert all(torch.equal(p, negated[n]) for n, p in m.named_parameters())  # the model handed over
    with pytest.raises(ConfigError, match="early_stop.criterion=target_rate needs method"):
        build_objective(UnlearnConfig(method="taskvector", early_stop={"criterion": "target_rate"})).setup(m)
