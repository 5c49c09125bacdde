"""Loop options of the authors' code and of the Trainer: length-grouped batches, AdamW restarted
per epoch, D_c drawn with replacement, gradient accumulation, no weight decay on biases and
normalisation weights, padding to multiples of 8 under mixed precision, logging every k steps.
Each test can fail."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from unbackdoor.batches import LengthGroupedBatches, TokenizedSet
from unbackdoor.objectives.ce import CrossEntropy
from unbackdoor.training import LoopConfig, train_loop


def test_grouped_batches_cover_each_row_once_with_little_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 64, (1000,), generator=g).tolist()
    batches = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(1), mega=10))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(LengthGroupedBatches(lengths, 32, g)) == 32
    used = sum(lengths)
    grouped = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    plain = sum(max(lengths[i] for i in range(k, min(k + 32, 1000))) * min(32, 1000 - k) for k in range(0, 1000, 32))
    assert used / grouped > 0.9 > 0.7 > used / plain
    # Batch order is shuffled: not long-to-short or short-to-long, and another seed gives another order.
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    again = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(1), mega=10))
    other = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(2), mega=10))
    assert again == batches != other


class Recorder(CrossEntropy):
    """CE that keeps the classifier weights before each step, so the test sees every update."""

    def __init__(self, labels=None):
        super().__init__()
        self.snapshots, self.labels = [], labels

    def __call__(self, model, batch, clean):
        self.snapshots.append(model.classifier.weight.detach().flatten().clone())
        if clean is not None:
            self.labels.extend(clean["idx"].tolist())
        return super().__call__(model, batch, clean)


def _run(tiny_base, tmp_path, name, **opts):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=2)
    rows = [{"text": f"word {'x ' * (i % 7)} {i}", "label": i % 2} for i in range(24)]
    data = TokenizedSet(tok, rows, 32)
    obj = Recorder(labels=[])
    cfg = LoopConfig(epochs=2, lr=1e-3, batch_size=8, grad_clip=0, scheduler="constant", checkpoint_every=0, **opts)
    train_loop(model, tok, obj, data, cfg, tmp_path / name, paired=data, progress=False)
    steps = torch.stack(obj.snapshots)
    return steps[1:] - steps[:-1], obj.labels


def test_reset_optimizer_restarts_adam_each_epoch(tiny_base, tmp_path, tmp_cache):
    # Adam's first step moves every coordinate by exactly lr (m/sqrt(v) = g/|g|): with the reset this
    # holds for the first step of epoch 2 (step index 3 of 3 per epoch), without it not.
    reset, _ = _run(tiny_base, tmp_path, "reset", reset_optimizer=True)
    plain, _ = _run(tiny_base, tmp_path, "plain", reset_optimizer=False)
    first_of_epoch2 = 3
    assert torch.allclose(reset[0].abs(), torch.full_like(reset[0], 1e-3), rtol=1e-3)
    assert torch.allclose(reset[first_of_epoch2].abs(), torch.full_like(reset[0], 1e-3), rtol=1e-3)
    assert not torch.allclose(plain[first_of_epoch2].abs(), torch.full_like(reset[0], 1e-3), rtol=1e-2)
    assert torch.equal(reset[:first_of_epoch2], plain[:first_of_epoch2])


def test_clean_batches_with_replacement_repeat_rows(tiny_base, tmp_path, tmp_cache):
    _, shuffled = _run(tiny_base, tmp_path, "shuffle", clean_sampling="shuffle")
    _, drawn = _run(tiny_base, tmp_path, "replacement", clean_sampling="replacement")
    # A shuffled pass has each of the 24 rows once per 3 batches; 24 draws with replacement repeat some
    # (probability of no repeat: 24!/24^24 < 1e-9).
    assert sorted(shuffled[:24]) == list(range(24))
    assert len(set(drawn[:24])) < 24


# ---------------------------------------------------------------- gradient accumulation, weight decay, padding, logging

def _deterministic(tiny_base):
    # No dropout: two micro-batches of 4 then compute exactly what one batch of 8 does.
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=2, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)


def _train(tiny_base, out, n=20, **opts):
    from unbackdoor.artifacts import read_jsonl

    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = _deterministic(tiny_base)
    rows = [{"text": f"word {'x ' * (i % 5)} {i}", "label": i % 2} for i in range(n)]
    cfg = LoopConfig(**{"epochs": 2, "lr": 1e-3, "batch_size": 8, "grad_clip": 1.0, "scheduler": "linear",
                        "checkpoint_every": 0, "group_by_length": False, **opts})
    train_loop(model, tok, CrossEntropy(), TokenizedSet(tok, rows, 32), cfg, out, progress=False)
    return model, read_jsonl(out / "loss_log.jsonl")


def test_gradient_accumulation_equals_the_whole_batch(tiny_base, tmp_path, tmp_cache):
    # 20 rows, batch 8: steps of 8, 8 and 4 rows. Accumulating 2 micro-batches of 4 must give the same
    # updates, the epoch's last, short group (one micro-batch of 4) included.
    whole, log_whole = _train(tiny_base, tmp_path / "whole")
    accumulated, log_acc = _train(tiny_base, tmp_path / "acc", gradient_accumulation_steps=2)
    assert [r["step"] for r in log_acc] == [r["step"] for r in log_whole] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in log_acc] == pytest.approx([r["lr"] for r in log_whole])
    assert [r["loss"] for r in log_acc] == pytest.approx([r["loss"] for r in log_whole], rel=1e-5)
    for (name, p), q in zip(whole.named_parameters(), accumulated.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    untouched = _deterministic(tiny_base)
    assert not torch.allclose(whole.classifier.weight, untouched.classifier.weight)


def test_batch_size_must_split_into_the_accumulated_micro_batches(tiny_base, tmp_path, tmp_cache):
    from unbackdoor.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size 8 is not a multiple of gradient_accumulation_steps 3"):
        _train(tiny_base, tmp_path / "bad", gradient_accumulation_steps=3)


def test_log_every_k_steps_writes_their_means(tiny_base, tmp_path, tmp_cache):
    _, every = _train(tiny_base, tmp_path / "every", n=40)  # 5 steps per epoch
    _, pairs = _train(tiny_base, tmp_path / "pairs", n=40, log_every=2)
    assert [r["step"] for r in pairs] == [2, 4, 5, 7, 9, 10]  # an epoch's last, partial window is written too
    by_step = {r["step"]: r["loss"] for r in every}
    expect = [(by_step[1] + by_step[2]) / 2, (by_step[3] + by_step[4]) / 2, by_step[5]]
    assert [r["loss"] for r in pairs[:3]] == pytest.approx(expect, rel=1e-6)
    assert [r["epoch"] for r in pairs] == [1, 1, 1, 2, 2, 2]


def test_no_weight_decay_on_biases_and_normalisation_weights(tiny_base):
    from unbackdoor.training import parameter_groups

    class RMSNorm(torch.nn.Module):  # the class-name rule that catches LlamaRMSNorm and the like
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    model = _deterministic(tiny_base)
    model.extra_norm = RMSNorm()
    decay, keep = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and keep["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert kept == {n for n in names.values() if n.endswith("bias") or "LayerNorm" in n or n == "extra_norm.weight"}
    assert decayed and all(p.dim() == 2 for p in decay["params"])
    assert len(parameter_groups(model, 0.0)) == 1  # as before, so old checkpoints still resume


def test_padding_to_a_multiple_of_8_under_mixed_precision(tiny_base, tmp_path, tmp_cache):
    from accelerate.state import AcceleratorState

    from unbackdoor.batches import Collator
    from unbackdoor.training import make_accelerator

    tok = AutoTokenizer.from_pretrained(tiny_base)
    items = [{"input_ids": [1] * n, "attention_mask": [1] * n, "labels": 0, "idx": i} for i, n in enumerate((3, 9))]
    assert Collator(tok)(items)["input_ids"].shape == (2, 9)
    padded = Collator(tok, 8)(items)
    assert padded["input_ids"].shape == (2, 16) and padded["attention_mask"].sum().item() == 12

    widths = []

    class Widths(CrossEntropy):
        def __call__(self, model, batch, clean):
            widths.append(batch["input_ids"].shape[1])
            return super().__call__(model, batch, clean)

    rows = [{"text": "word " * (1 + i % 11), "label": i % 2} for i in range(16)]
    AcceleratorState._reset_state(True)  # one mixed-precision setting per process, as in a real run
    try:
        for precision in ("no", "bf16"):
            widths.clear()
            train_loop(_deterministic(tiny_base), tok, Widths(), TokenizedSet(tok, rows, 32),
                       LoopConfig(epochs=1, lr=1e-4, batch_size=4, checkpoint_every=0), tmp_path / precision,
                       accelerator=make_accelerator(precision), progress=False)
            AcceleratorState._reset_state(True)
            if precision == "no":
                assert any(w % 8 for w in widths)
            else:
                assert all(w % 8 == 0 for w in widths), widths
    finally:
        AcceleratorState._reset_state(True)


@pytest.mark.parametrize("name,expected", [
    ("constant", [1.0] * 8),
    ("linear", [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]),
    # the demo's schedule: GA gets the constant rate's push for 6 of 8 steps, then every method settles
    ("constant_then_linear", [1.0] * 6 + [1.0, 0.5]),
])
def test_lr_schedules_step_by_step(name, expected):
    from unbackdoor.training import _schedule

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _schedule(opt, LoopConfig(epochs=8, lr=1.0, batch_size=1, scheduler=name, decay_ratio=0.25), 8)
    seen = []
    for _ in range(8):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected)


def test_an_unknown_schedule_is_a_config_error():
    from unbackdoor.errors import ConfigError
    from unbackdoor.training import _schedule

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="cosine"):
        _schedule(opt, LoopConfig(epochs=1, lr=1.0, batch_size=1, scheduler="cosine"), 8)
