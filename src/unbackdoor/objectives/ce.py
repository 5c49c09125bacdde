"""Plain cross-entropy: the victim's training on D, and ReTrain (the gold standard) on D_c."""

from __future__ import annotations

from ..batches import forward_logits
from . import register
from .base import Objective, ce


class CrossEntropy(Objective):
    """Fine-tuning on the training rows; not an unlearning method, so not registered."""

    name = "ce"
    uses_clean = False

    def __call__(self, model, batch, clean):
        loss = ce(forward_logits(model, batch), batch["labels"], self.class_weight)
        return loss, {"loss": loss.item()}


@register
class ReTrain(CrossEntropy):
    """ReTrain: the clean pre-trained model trained on D_c only, with the victim's settings."""

    name = "retrain"
    from_scratch = True
