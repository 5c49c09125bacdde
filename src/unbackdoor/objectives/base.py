"""What every objective shares: settings, the unlearning sets before training, the poisoned model's
reference outputs, early stopping, the model it hands over, and the
retain_weight * CE(D_c) + forget(D_p) + regulariser shape of GA, NPO, RGA and their relatives."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..batches import forward_logits, predict_logits
from ..errors import ConfigError
from ..settings import Settings


class EarlyStopConfig(Settings):
    criterion: Literal["off", "lambda", "target_rate"] = Field(
        "off", description="stop when RGA's lambda, or the share of D_p still predicted as the target, stays below threshold")
    threshold: float = Field(0.05, ge=0, le=1)
    patience: int = Field(20, ge=1, description="consecutive steps below threshold")


class Objective:
    name: ClassVar[str]
    Settings: ClassVar[type[Settings]] = Settings  # no hyperparameters of its own
    needs_reference: ClassVar[bool] = False  # the poisoned model's outputs on D_p, computed once before training
    needs_base: bool = False  # theta_base, the clean model the victim was fine-tuned from
    uses_clean: ClassVar[bool] = True  # pairs each step with a random D_c batch
    from_scratch: ClassVar[bool] = False  # trains the clean base on D_c instead of updating the victim
    stop_signals: ClassVar[tuple[str, ...]] = ()  # logged values an early-stop criterion may watch
    # Ascends on D_p from the victim, so an epoch can be chosen by unbackdoor.selection (unlearn.select).
    selectable: ClassVar[bool] = False
    class_weight: torch.Tensor | None = None  # per-class weights of the CE on the training / D_c rows

    def __init__(self, settings: Settings | None = None, early_stop: EarlyStopConfig | None = None, stage=None):
        """settings: its own section; stage: the whole unlearn config it runs under (lr, scheduler, ...)."""
        self.settings = settings if settings is not None else self.Settings()
        self.early = early_stop or EarlyStopConfig()
        self.stage = stage
        self.ref_logits: torch.Tensor | None = None
        self.base_params: dict[str, torch.Tensor] | None = None
        self.sets = None
        self._below = 0
        self.stop_reason = None

    def data_from(self, forget, retain, collator, batch_size: int) -> None:
        """The unlearning sets (TokenizedSets; retain is None for a method without D_c), given before
        training so that setup() can read them: f_p's outputs on D_p, FinePrune's activations on D_c."""
        self.sets = SimpleNamespace(forget=forget, retain=retain, collator=collator, batch_size=batch_size)

    def set_base(self, params: dict[str, torch.Tensor]) -> None:
        """theta_base, parameter name -> frozen tensor (models.base_parameters)."""
        self.base_params = params

    def setup(self, model, accelerator=None) -> None:
        if self.needs_reference and self.ref_logits is None and self.sets is not None:
            # The loop calls setup after accelerator.prepare (so on its device, in its precision) and
            # before a checkpoint is restored (so these are still the poisoned model's outputs).
            s = self.sets
            self.set_reference(predict_logits(model, s.forget, s.collator, s.batch_size, accelerator=accelerator))
        if self.needs_reference and self.ref_logits is None:
            raise ConfigError(f"{self.name} needs the poisoned model's outputs on D_p: call data_from() or "
                              "set_reference() before training")
        if self.early.criterion != "off" and self.early.criterion not in self.stop_signals:
            from . import OBJECTIVES

            able = [n for n in OBJECTIVES if self.early.criterion in OBJECTIVES[n].stop_signals]
            raise ConfigError(f"early_stop.criterion={self.early.criterion} needs method {' or '.join(able)}, "
                              f"not {self.name}")

    def set_reference(self, logits: torch.Tensor) -> None:
        self.ref_logits = logits.detach().float()

    def reference(self, batch) -> torch.Tensor:
        return self.ref_logits.to(batch["idx"].device)[batch["idx"]]

    def __call__(self, model, batch, clean):
        raise NotImplementedError

    @contextlib.contextmanager
    def result(self, model, final: bool):
        """The model the method hands over, made from the trained one, for as long as the context lasts:
        the end-of-epoch evaluation runs inside it and, when `final`, the change stays (the saved model).
        Most methods hand over what the loop trained; task-vector negation does not."""
        yield

    def _watch(self, logits_p, batch, logs: dict) -> None:
        # The share of D_p still predicted as its poisoned label: the backdoor's grip on the batch.
        logs["target_rate"] = (logits_p.argmax(-1) == batch["labels"]).float().mean().item()
        value = logs.get(self.early.criterion)
        if value is None:
            return
        self._below = self._below + 1 if value < self.early.threshold else 0
        if self._below >= self.early.patience:
            self.stop_reason = (f"{self.early.criterion} < {self.early.threshold} for {self.early.patience} "
                                "consecutive steps")

    def on_optimiser_step(self, lr: float) -> None:
        """Called by the loop right after each optimiser step, with the learning rate that step used: an
        objective that updates weights outside the loss (RGA's separate ascent step) does it here."""

    def should_stop(self) -> bool:
        return self.stop_reason is not None

    def state_dict(self) -> dict:
        return {"below": self._below}

    def load_state_dict(self, state: dict) -> None:
        self._below = state.get("below", 0)


def ce(logits, labels, weight=None):
    return F.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits))


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Inverse class frequency, n / (k * n_c) (scikit-learn's "balanced"): each class then weighs as
    much in the loss as if the classes were equally frequent. An absent class gets 0."""
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_classes).double()
    w = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return w.float()


class Unlearning(Objective):
    """retain_weight * CE(D_c) + forget(D_p) + regulariser: GA, NPO and RGA differ only in the last two."""

    stop_signals = ("target_rate",)
    selectable = True
    forgets: ClassVar[bool] = True  # False: no term on D_p (fine-tuning), whose forward is then only watched
    retain_weight: float = 1.0  # GradDiff makes it a setting

    def forget(self, logits, ce_each, batch, logs) -> torch.Tensor:
        raise NotImplementedError

    def regulariser(self, logs) -> torch.Tensor | float:
        return 0.0

    def __call__(self, model, batch, clean):
        # Without a term on D_p its forward needs no graph (and DDP must not wait for its gradients).
        with torch.set_grad_enabled(self.forgets and torch.is_grad_enabled()):
            logits = forward_logits(model, batch)
            ce_each = F.cross_entropy(logits, batch["labels"], reduction="none")  # CE w.r.t. the poisoned label
        logs = {"ce_p": ce_each.mean().item()}
        forget = self.forget(logits, ce_each, batch, logs) if self.forgets else 0.0
        ce_c = ce(forward_logits(model, clean), clean["labels"], self.class_weight)
        loss = self.retain_weight * ce_c + forget + self.regulariser(logs)
        logs.update(loss=loss.item(), ce_c=ce_c.item())
        self._watch(logits, batch, logs)
        return loss, logs
