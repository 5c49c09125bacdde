"""The unlearning mathematics (SPEC section 5), each assertion able to fail."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from unbackdoor.config import UnlearnConfig
from unbackdoor.objectives import build_objective
from unbackdoor.objectives.npo import npo_loss
from unbackdoor.objectives.rga import RGA, kl_per_sample, l2_to_base, rga_lambda
from unbackdoor.errors import ConfigError


class TinyClassifier(torch.nn.Module):
    """Enough of a HF classifier for the objectives: model(**inputs).logits."""

    def __init__(self, k=3, d=5):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(d, 8)
        self.classifier = torch.nn.Linear(8, k)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return type("Out", (), {"logits": self.classifier(torch.tanh(self.body(input_ids.float())))})


def batch(n=4, d=5, label=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randn(n, d, generator=g), "labels": torch.full((n,), label), "idx": torch.arange(n)}


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_ga_gradient_on_dp_is_minus_ce():
    m = TinyClassifier()
    bp, bc = batch(label=2), batch(seed=2, label=1)
    ga = build_objective(UnlearnConfig(method="ga"))
    g_ga = grads(m, ga(m, bp, bc)[0])
    g_ce_c = grads(m, F.cross_entropy(m(bc["input_ids"]).logits, bc["labels"]))
    g_ce_p = grads(m, F.cross_entropy(m(bp["input_ids"]).logits, bp["labels"]))
    assert torch.allclose(g_ga - g_ce_c, -g_ce_p, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_loss_matches_hand_computation(beta):
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.5], [-1.0, 3.0]])
    ref = torch.tensor([[3.0, -1.0], [1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    expected = 0.0
    for lg, rf, yy in zip(logits.tolist(), ref.tolist(), y.tolist()):
        p = math.exp(lg[yy]) / sum(math.exp(v) for v in lg)
        pref = math.exp(rf[yy]) / sum(math.exp(v) for v in rf)
        expected += (2 / beta) * math.log(1 + (p / pref) ** beta) / 3
    got = npo_loss(F.cross_entropy(logits, y, reduction="none"), F.cross_entropy(ref, y, reduction="none"), beta)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_npo_gradient_vanishes_as_pi_theta_goes_to_zero():
    ref = torch.tensor([0.7])
    norms = []
    for ce in (1.0, 10.0, 100.0, 1000.0):  # CE = -log pi_theta: pi_theta -> 0
        x = torch.tensor([ce], requires_grad=True)
        npo_loss(x, ref, 0.1).backward()
        norms.append(abs(x.grad.item()))
    assert norms == sorted(norms, reverse=True) and norms[-1] < 1e-30 < norms[0]


def test_lambda_is_one_at_the_poisoned_model_and_decays_at_rate_alpha():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    lam, kl = rga_lambda(logits, logits.clone(), alpha=2.0)
    assert lam.item() == pytest.approx(1.0) and kl.abs().max().item() < 1e-6
    other = logits + torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    for alpha in (0.5, 2.0, 4.0):
        lam, kl = rga_lambda(other, logits, alpha)
        assert kl.mean().item() > 0
        assert math.log(lam.item()) / kl.mean().item() == pytest.approx(-alpha, rel=1e-5)


def test_kl_directions_differ_and_match_definition():
    a, b = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p, q = F.softmax(a, -1), F.softmax(b, -1)
    assert kl_per_sample(a, b, "current_poisoned").item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-5)
    assert kl_per_sample(a, b, "poisoned_current").item() == pytest.approx((q * (q / p).log()).sum().item(), rel=1e-5)


def test_lambda_per_batch_and_per_sample_agree_for_identical_samples():
    row = torch.tensor([[1.0, -2.0, 0.5]])
    logits, ref = row.repeat(5, 1), (row * 0.3).repeat(5, 1)
    lb, _ = rga_lambda(logits, ref, 2.0, mode="batch")
    ls, _ = rga_lambda(logits, ref, 2.0, mode="sample")
    assert torch.allclose(ls, lb.expand(5))


def _by_hand(logits, ref, labels, alpha, mode):
    """-lambda-weighted CE(D_p) in plain Python: softmax, KL(f_theta || f_p) and CE per sample."""
    def softmax(xs):
        e = [math.exp(x) for x in xs]
        return [v / sum(e) for v in e]

    kls, ces = [], []
    for lg, rf, y in zip(logits, ref, labels):
        p, q = softmax(lg), softmax(rf)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
        ces.append(-math.log(p[y]))
    n = len(ces)
    if mode == "batch":
        return -math.exp(-alpha * sum(kls) / n) * sum(ces) / n
    return -sum(math.exp(-alpha * k) * c for k, c in zip(kls, ces)) / n


def test_per_sample_lambda_weights_each_sample_by_its_own_kl():
    m = TinyClassifier(k=2)
    bp, bc = batch(label=1), batch(seed=5, label=0)
    with torch.no_grad():
        lg = m(bp["input_ids"]).logits
    ref = lg + torch.tensor([[0.0, 0.0], [0.5, -0.5], [2.0, -2.0], [-3.0, 3.0]])  # KL 0 for sample 0, large for 3
    lam_s, kl = rga_lambda(lg, ref, 2.0, mode="sample")
    lam_b, _ = rga_lambda(lg, ref, 2.0, mode="batch")
    assert kl[0] < 1e-6 < kl[1] < kl[2] and lam_s[0] == pytest.approx(1.0) and lam_s.max() - lam_s.min() > 0.5
    assert not torch.allclose(lam_s, lam_b.expand(4), atol=0.05)
    with torch.no_grad():
        ce_c = F.cross_entropy(m(bc["input_ids"]).logits, bc["labels"]).item()
    args = (lg.tolist(), ref.tolist(), bp["labels"].tolist(), 2.0)
    losses = {}
    for mode in ("sample", "batch"):
        # The paper's Eq. 6 as one loss: the joint ascent step (the separate one takes -lambda*CE(D_p) out).
        rga = build_objective(UnlearnConfig(method="rga", rga={"beta": 0, "lambda_mode": mode, "ascent_step": "joint"}))
        rga.set_reference(ref)
        rga.setup(m)
        losses[mode] = rga(m, bp, bc)[0].item()
        assert losses[mode] == pytest.approx(ce_c + _by_hand(*args, mode), rel=1e-5)
    assert abs(losses["sample"] - losses["batch"]) > 0.05


def test_lambda_has_no_gradient_path():
    logits = torch.randn(3, 2, requires_grad=True)
    lam, _ = rga_lambda(logits, torch.zeros(3, 2), 2.0)
    assert not lam.requires_grad


def test_l2_term_zero_at_base_finite_gradient_and_modes():
    p1, p2 = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))
    pairs = [(p1, p1.detach().clone()), (p2, p2.detach().clone())]
    d = l2_to_base(pairs)
    d.backward()
    assert d.item() == 0 and torch.isfinite(p1.grad).all() and p1.grad.abs().sum() == 0
    pairs = [(p1, torch.zeros(3)), (p2, torch.ones(2, 2))]  # ||1,1,1|| = sqrt3, ||-1 x4|| = 2
    assert l2_to_base(pairs, "global").item() == pytest.approx(math.sqrt(7))
    assert l2_to_base(pairs, "per_tensor").item() == pytest.approx(math.sqrt(3) + 2)


def test_rga_loss_assembles_eq6_and_leaves_out_the_head():
    m = TinyClassifier(k=2)
    base = {"body.weight": m.body.weight.detach() + 0.1, "body.bias": m.body.bias.detach().clone()}
    cfg = UnlearnConfig(method="rga", rga={"ascent_step": "joint"})  # Eq. 6 as one loss
    rga = build_objective(cfg, base_params=base)
    bp, bc = batch(label=1), batch(seed=5, label=0)
    with torch.no_grad():
        ref = m(bp["input_ids"]).logits + torch.tensor([0.5, -0.5])
    rga.set_reference(ref)
    rga.setup(m)
    assert {id(p) for p, _ in rga.pairs} == {id(m.body.weight), id(m.body.bias)}  # no classifier.*
    loss, logs = rga(m, bp, bc)
    with torch.no_grad():
        lg = m(bp["input_ids"]).logits
        lam = torch.exp(-2.0 * kl_per_sample(lg, ref).mean())
        expect = (-lam * F.cross_entropy(lg, bp["labels"]) + F.cross_entropy(m(bc["input_ids"]).logits, bc["labels"])
                  + 1e-2 * (0.1 * math.sqrt(m.body.weight.numel())))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert logs["lambda"] == pytest.approx(lam.item(), rel=1e-5)


def test_reference_outputs_are_looked_up_not_recomputed():
    m = TinyClassifier(k=2)
    rga = build_objective(UnlearnConfig(method="rga", rga={"beta": 0}))
    npo = build_objective(UnlearnConfig(method="npo"))
    bp, bc = batch(label=1), batch(seed=5, label=0)
    for obj in (rga, npo):
        obj.set_reference(torch.zeros(10, 2))
        obj.setup(m)
        m.calls = 0
        obj(m, {**bp, "idx": torch.tensor([7, 3, 9, 0])}, bc)
        assert m.calls == 2  # D_p and D_c: no reference forward
    assert torch.equal(npo.reference({"idx": torch.tensor([9, 0])}), torch.zeros(2, 2))


def test_unknown_method_and_misplaced_early_stop():
    with pytest.raises(ConfigError, match="unknown unlearning method 'sgd'; valid methods: fineprune, finetune, ga, "
                                          "graddiff, npo, retrain, rga, simnpo, taskvector"):
        build_objective(UnlearnConfig(method="sgd"))
    with pytest.raises(ConfigError, match="needs method rga"):
        build_objective(UnlearnConfig(method="ga", early_stop={"criterion": "lambda"})).setup(TinyClassifier())


def test_early_stop_on_lambda_after_patience():
    m = TinyClassifier(k=2)
    rga = build_objective(UnlearnConfig(method="rga", rga={"beta": 0, "alpha": 50.0},
                            early_stop={"criterion": "lambda", "threshold": 0.5, "patience": 2}))
    bp, bc = batch(label=1), batch(seed=5, label=0)
    rga.set_reference(torch.tensor([[9.0, -9.0]]).repeat(4, 1))  # far from f_theta: lambda ~ 0
    rga.setup(m)
    rga(m, bp, bc)
    assert not rga.should_stop()
    rga(m, bp, bc)
    assert rga.should_stop() and "lambda < 0.5 for 2" in rga.stop_reason


@pytest.mark.parametrize("base", ["minilm", "tiny"])
def test_theta_base_from_files_equals_loading_the_model(base, tiny_base):
    from unbackdoor.models import _base_from_model, _base_from_safetensors, load_classifier, resolve_model

    name = tiny_base if base == "tiny" else "minilm"
    model, _, _ = load_classifier(name, 2, ["a", "b"], for_training=True)
    from_files = _base_from_safetensors(model, __import__("pathlib").Path(resolve_model(name)))
    from_model = _base_from_model(model, resolve_model(name), False)
    assert from_files.keys() == from_model.keys() and len(from_files) > 10
    assert not any(k.startswith("classifier.") for k in from_files)
    assert all(torch.equal(from_files[k], from_model[k]) for k in from_files)


def test_balanced_class_weights_reach_the_ce_on_training_and_clean_rows():
    from unbackdoor.objectives import class_weights
    from unbackdoor.objectives.ce import CrossEntropy

    w = class_weights([0] * 90 + [1] * 10, 2)  # n / (k * n_c): 100/180 and 100/20
    assert w.tolist() == pytest.approx([100 / 180, 5.0])
    assert class_weights([0, 0, 2], 3).tolist() == pytest.approx([0.5, 0.0, 1.0])  # absent class: 0
    m = TinyClassifier(k=2)
    b = {**batch(n=4), "labels": torch.tensor([0, 0, 0, 1])}
    ce = CrossEntropy()
    plain = ce(m, b, None)[0].item()
    ce.class_weight = w
    with torch.no_grad():
        each = F.cross_entropy(m(b["input_ids"]).logits, b["labels"], reduction="none")
    wy = w[b["labels"]]
    assert ce(m, b, None)[0].item() == pytest.approx(((wy * each).sum() / wy.sum()).item(), rel=1e-5)
    assert ce(m, b, None)[0].item() != pytest.approx(plain, rel=1e-3)
    ga = build_objective(UnlearnConfig(method="ga", class_weights="balanced"))
    ga.class_weight = w
    _, logs = ga(m, batch(label=1), b)  # the weights apply to CE(D_c), not to the ascent on D_p
    assert logs["ce_c"] == pytest.approx(((wy * each).sum() / wy.sum()).item(), rel=1e-5)
    assert logs["ce_p"] == pytest.approx(F.cross_entropy(m(batch(label=1)["input_ids"]).logits,
                                                         torch.ones(4, dtype=torch.long)).item(), rel=1e-5)


def test_lambda_floor_of_the_papers_kl_and_its_removal():
    # Binary f_p with eps = 0.1 on the non-target class; f_theta moves all its mass there.
    ref = torch.log(torch.tensor([[0.1, 0.9]]))
    far = torch.tensor([[30.0, -30.0]])
    from unbackdoor.objectives.rga import kl_cap

    assert kl_cap(ref).item() == pytest.approx(math.log(10), rel=1e-5)
    assert kl_per_sample(far, ref).item() == pytest.approx(math.log(10), rel=1e-4)  # KL has reached its cap
    kept, _ = rga_lambda(far, ref, 2.0)
    removed, _ = rga_lambda(far, ref, 2.0, floor="remove")
    assert kept.item() == pytest.approx(0.01, rel=1e-3)  # eps^alpha: the ascent never stops
    assert removed.item() == pytest.approx(0.0, abs=1e-6)
    same, _ = rga_lambda(ref.clone(), ref, 2.0, floor="remove")
    assert same.item() == pytest.approx(1.0)
    # In between, the rescaled lambda is (lambda - floor) / (1 - floor), per sample too.
    mid = torch.tensor([[0.0, 0.0]])
    k, _ = rga_lambda(mid, ref, 2.0, mode="sample")
    r, _ = rga_lambda(mid, ref, 2.0, mode="sample", floor="remove")
    assert r.item() == pytest.approx((k.item() - 0.01) / 0.99, rel=1e-4)
    # The authors' direction KL(f_p || f_theta) has no cap: nothing to remove.
    a, _ = rga_lambda(far, ref, 2.0, direction="poisoned_current")
    b, _ = rga_lambda(far, ref, 2.0, direction="poisoned_current", floor="remove")
    assert a.item() == b.item() < 1e-10


def test_separate_ascent_step_is_scaled_by_lambda_where_adam_would_cancel_it():
    """A weight that only D_p's gradient reaches: under the joint loss, AdamW's first step moves it by lr
    whatever lambda is; with ascent_step=separate it moves by lambda * lr (and away from the poisoned label),
    once per optimiser step however many micro-batches the step accumulates, at the lr the loop passes."""
    m = TinyClassifier(k=2)
    bp = batch(label=1)
    with torch.no_grad():
        ref = m(bp["input_ids"]).logits + torch.tensor([[3.0, -3.0]])  # f_theta far from f_p: lambda small
    cfg = UnlearnConfig(method="rga", lr=1e-2, scheduler="linear", rga={"beta": 0.0, "ascent_step": "separate"})
    assert UnlearnConfig(method="rga").rga.ascent_step == "separate"  # the default
    obj = build_objective(cfg)
    obj.set_reference(ref)
    obj.setup(m)
    before = m.classifier.bias.detach().clone()
    lams = []
    for _ in range(2):  # two micro-batches of one optimiser step
        logs = {}
        logits = m(bp["input_ids"]).logits
        out = obj.forget(logits, F.cross_entropy(logits, bp["labels"], reduction="none"), bp, logs)
        assert out == 0.0 and torch.equal(m.classifier.bias, before)  # nothing moves before the step
        lams.append(logs["lambda"])
    obj.on_optimiser_step(5e-3)
    moved = m.classifier.bias.detach() - before
    assert 1e-4 < lams[0] < 0.1
    # Adam's first step is lr * sign(g) per coordinate, here scaled by the step's mean lambda.
    assert torch.allclose(moved.abs(), torch.full_like(moved, 5e-3 * sum(lams) / 2), rtol=1e-3)
    assert moved[1] < 0 < moved[0]  # the poisoned label's logit goes down: ascent on CE(D_p)
    obj.on_optimiser_step(5e-3)  # no pending ascent: nothing moves
    assert torch.equal(m.classifier.bias.detach() - before, moved)


def test_ascent_lr_scale_multiplies_the_separate_step_and_is_refused_with_the_joint_one():
    m = TinyClassifier(k=2)
    bp = batch(label=1)
    with torch.no_grad():
        ref = m(bp["input_ids"]).logits + torch.tensor([[3.0, -3.0]])
    moves = []
    for scale in (1.0, 4.0):
        m2 = copy.deepcopy(m)
        obj = build_objective(UnlearnConfig(method="rga", lr=1e-2, rga={"beta": 0.0, "ascent_lr_scale": scale}))
        obj.set_reference(ref)
        obj.setup(m2)
        logits = m2(bp["input_ids"]).logits
        obj.forget(logits, F.cross_entropy(logits, bp["labels"], reduction="none"), bp, {})
        before = m2.classifier.bias.detach().clone()
        obj.on_optimiser_step(5e-3)
        moves.append(m2.classifier.bias.detach() - before)
    assert torch.allclose(moves[1], 4 * moves[0], rtol=1e-3) and moves[0].abs().min() > 1e-5
    with pytest.raises(ValidationError, match="separate ascent step only"):
        UnlearnConfig(method="rga", rga={"ascent_step": "joint", "ascent_lr_scale": 4.0})


def test_auto_ascent_scale_raises_a_small_epoch_of_ascent_to_min_epoch_ascent_and_never_lowers_one():
    """auto: scale = max(1, min_epoch_ascent / (lr * ascent steps an epoch)); the steps are counted from f_p's
    outputs on D_p (a row each) and the stage's batch size; the scale moves the weights as a fixed one would."""
    m = TinyClassifier(k=2)
    bp = batch(label=1)
    with torch.no_grad():
        ref = m(bp["input_ids"]).logits + torch.tensor([[3.0, -3.0]])

    def built(rows, lr, **rga):
        obj = build_objective(UnlearnConfig(method="rga", lr=lr, batch_size=32, rga={"beta": 0.0, **rga}))
        obj.set_reference(ref.repeat(rows, 1)[:rows])  # one row of f_p's outputs per D_p sample
        return obj

    assert UnlearnConfig(method="rga").rga.ascent_lr_scale == "auto"  # the default
    cases = {(64, 2e-5): 10.0,     # the authors' setting: 2 steps at 2e-5 move 4e-5 an epoch
             (65, 2e-5): 4e-4 / 6e-5,  # a partial batch is a step
             (1655, 2e-5): 1.0,    # full SST-2: 52 steps, 1.04e-3, above the minimum: left alone
             (12, 1e-1): 1.0}      # a large lr is never scaled down
    for (rows, lr), want in cases.items():
        obj = built(rows, lr)
        obj.setup(copy.deepcopy(m))
        assert obj.scale == pytest.approx(want, rel=1e-9), (rows, lr)
    doubled = built(64, 2e-5, min_epoch_ascent=8e-4)
    doubled.setup(copy.deepcopy(m))
    assert doubled.scale == pytest.approx(20.0)
    # The resolved scale moves the weights as the same fixed scale does.
    moves = []
    for obj in (built(64, 2e-5), built(64, 2e-5, ascent_lr_scale=10.0)):
        m2 = copy.deepcopy(m)
        obj.setup(m2)
        logs = {}
        logits = m2(bp["input_ids"]).logits
        obj.forget(logits, F.cross_entropy(logits, bp["labels"], reduction="none"), bp, logs)
        before = m2.classifier.bias.detach().clone()
        obj.on_optimiser_step(2e-5)
        moves.append(m2.classifier.bias.detach() - before)
        assert logs["ascent_lr_scale"] == pytest.approx(10.0)
    assert torch.allclose(moves[0], moves[1]) and moves[0].abs().min() > 1e-6
    # Without the unlearn config the batch size and lr are unknown: said, not guessed.
    bare = RGA(RGA.Settings(beta=0.0))
    bare.set_reference(ref)
    with pytest.raises(ConfigError, match="build_objective"):
        bare.setup(copy.deepcopy(m))
    # The joint step has no separate lr: auto records 1, and only 1 or auto is accepted.
    assert UnlearnConfig(method="rga", rga={"ascent_step": "joint"}).rga.ascent_lr_scale == 1.0
    for bad in (0, -2.0, "half"):
        with pytest.raises(ValidationError, match="ascent_lr_scale"):
            UnlearnConfig(method="rga", rga={"ascent_lr_scale": bad})
