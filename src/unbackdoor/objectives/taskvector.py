"""Task-vector negation (Ilharco et al. 2023, "Editing Models with Task Arithmetic"): fine-tune the
victim on D_p (the poisoned behaviour, with its poisoned labels), take the task vector
tau = theta_ft - theta_victim and hand over theta_victim - scale * tau.

Not a per-batch loss: the loop's steps are the fine-tuning (CE on D_p, for the unlearn config's
epochs, lr and batch size: the "copy" is the model itself, the victim's weights are kept aside),
and the negation is the model the method hands over (`result`), at every evaluation and at the end.
"""

from __future__ import annotations

import contextlib

import torch
from pydantic import Field

from ..batches import forward_logits
from ..settings import Settings
from . import register
from .base import Objective, ce


def negate(params: dict[str, torch.Tensor], victim: dict[str, torch.Tensor], scale: float) -> None:
    """In place: p <- victim - scale * (p - victim), for each named parameter of `victim`."""
    with torch.no_grad():
        for n, v in victim.items():
            params[n].copy_(v - scale * (params[n] - v))


@register
class TaskVector(Objective):
    """Task-vector negation: fine-tune on D_p, then theta_victim - scale * (theta_ft - theta_victim)."""

    name = "taskvector"
    uses_clean = False
    # target_rate is logged, but it rises as the copy learns D_p: nothing to stop on.
    stop_signals = ()

    class Settings(Settings):
        scale: float = Field(1.0, gt=0, description="lambda in theta_victim - lambda * (theta_ft - theta_victim)")

    def setup(self, model, accelerator=None):
        super().setup(model, accelerator)
        # The loop calls setup before restoring a checkpoint: on a resumed run these are still the victim's.
        # Trainable parameters only: under LoRA the vector is the adapters' (not the merged weights').
        self.victim = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def __call__(self, model, batch, clean):
        logits = forward_logits(model, batch)
        loss = ce(logits, batch["labels"])
        logs = {"loss": loss.item(), "ce_p": loss.item()}
        self._watch(logits, batch, logs)
        return loss, logs

    @contextlib.contextmanager
    def result(self, model, final: bool):
        params = dict(model.named_parameters())
        trained = None if final else {n: params[n].detach().clone() for n in self.victim}
        negate(params, self.victim, self.settings.scale)
        try:
            yield
        finally:
            if trained is not None:  # an evaluation mid-training: the fine-tuning goes on from where it was
                with torch.no_grad():
                    for n, t in trained.items():
                        params[n].copy_(t)
