"""Loop options of the authors' code and of the Trainer: length-grouped batches, AdamW restarted
per epoch, D_c drawn with replacement. Each test can fail."""

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
