"""SimNPO (Fan et al. 2024, "Simplicity prevails"): NPO without a reference model, length-normalised,
with a margin:

    L = retain_weight * CE(D_c) + forget_weight * (-(2/beta) E_{D_p}[logsigmoid(-(beta/|y|) log pi(y|x) - gamma)])

For a classifier the response y is one label, so |y| = 1 and -log pi(y|x) = CE(x, y):
the forget term is -(2/beta) mean(logsigmoid(beta * CE - gamma)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from . import register
from .graddiff import GradDiff


def simnpo_loss(ce_each: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """-(2/beta) * mean(logsigmoid(beta * CE - gamma)), i.e. the paper's term with |y| = 1."""
    return -(2.0 / beta) * F.logsigmoid(beta * ce_each - gamma).mean()


@register
class SimNPO(GradDiff):
    """Reference-free, length-normalised NPO with a margin (SimNPO)."""

    name = "simnpo"

    class Settings(GradDiff.Settings):
        beta: float = Field(4.5, gt=0, description="inverse temperature (open-unlearning's default; the forget "
                            "term's weight falls as 2*sigmoid(gamma - beta*CE(D_p)))")
        gamma: float = Field(0.0, description="reward margin (open-unlearning: beta*delta, delta=0)")

    def forget_term(self, ce_each, logs):
        out = simnpo_loss(ce_each, self.settings.beta, self.settings.gamma)
        logs["simnpo"] = out.item()
        return out
