"""Fine-tuning (the classic defence): L = CE(D_c). D_p is not trained on."""

from __future__ import annotations

from . import register
from .base import Unlearning


@register
class FineTune(Unlearning):
    """Fine-tuning on D_c only (the classic defence); D_p is watched (target_rate), never trained on.

    An epoch is a pass over D_p's batches, each step a D_c batch: the same number of steps as GA."""

    name = "finetune"
    forgets = False
