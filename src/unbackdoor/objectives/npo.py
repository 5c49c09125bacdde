"""NPO: L = CE(D_c) + (2/beta) E_{D_p}[log(1 + (pi_theta(y_p|x_p) / pi_ref(y_p|x_p))^beta)], pi_ref = f_p."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..settings import Settings
from . import register
from .base import Unlearning


def npo_loss(ce_theta: torch.Tensor, ce_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """-(2/beta) * mean(logsigmoid(beta * (CE_theta - CE_ref))) = (2/beta) E[log(1 + (pi_theta/pi_ref)^beta)]."""
    return -(2.0 / beta) * F.logsigmoid(beta * (ce_theta - ce_ref)).mean()


@register
class NPO(Unlearning):
    """Negative preference optimisation against the poisoned model as reference."""

    name = "npo"
    needs_reference = True

    class Settings(Settings):
        beta: float = Field(0.1, gt=0, description="NPO inverse temperature (authors' code: 1)")

    def forget(self, logits, ce_each, batch, logs):
        ce_ref = F.cross_entropy(self.reference(batch), batch["labels"], reduction="none")
        out = npo_loss(ce_each, ce_ref, self.settings.beta)
        logs["npo"] = out.item()
        return out
