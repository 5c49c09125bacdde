"""GradDiff (open-unlearning): L = forget_weight * (-CE(D_p)) + retain_weight * CE(D_c).

open-unlearning names the weights gamma (forget) and alpha (retain), both 1 by default; at 1 and 1
GradDiff is GA (Eq. 3)."""

from __future__ import annotations

from pydantic import Field

from ..settings import Settings
from . import register
from .base import Unlearning


@register
class GradDiff(Unlearning):
    """Gradient difference: weighted ascent on D_p and descent on D_c."""

    name = "graddiff"

    class Settings(Settings):
        forget_weight: float = Field(1.0, ge=0, description="weight of the forget term (open-unlearning: gamma)")
        retain_weight: float = Field(1.0, ge=0, description="weight of CE(D_c) (open-unlearning: alpha)")

    @property
    def retain_weight(self) -> float:
        return self.settings.retain_weight

    def forget_term(self, ce_each, logs):
        return -ce_each.mean()

    def forget(self, logits, ce_each, batch, logs):
        return self.settings.forget_weight * self.forget_term(ce_each, logs)
