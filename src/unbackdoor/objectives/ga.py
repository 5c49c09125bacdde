"""GA (Eq. 3): L = CE(D_c) - CE(D_p)."""

from __future__ import annotations

from . import register
from .base import Unlearning


@register
class GradientAscent(Unlearning):
    """Gradient ascent on D_p, descent on D_c (Eq. 3)."""

    name = "ga"

    def forget(self, logits, ce_each, batch, logs):
        return -ce_each.mean()
