"""RGA (Eq. 6): L = -lambda * CE(D_p) + CE(D_c) + beta * ||theta - theta_base||_2,
lambda = exp(-alpha * KL(f_theta(.|x_p) || f_p(.|x_p))), computed without gradient."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from ..errors import BASE_HINT, BaseModelError, ConfigError
from ..settings import Settings
from . import register
from .base import Unlearning


# ---------------------------------------------------------------- the mathematics, as plain functions

def kl_per_sample(logits: torch.Tensor, ref_logits: torch.Tensor, direction: str = "current_poisoned") -> torch.Tensor:
    """KL over the full class distribution, one value per sample.

    current_poisoned: KL(f_theta || f_p) (paper, Eq. 6); poisoned_current: KL(f_p || f_theta) (authors' code).
    """
    logp, logq = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    if direction == "poisoned_current":
        logp, logq = logq, logp
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_cap(ref_logits: torch.Tensor) -> torch.Tensor:
    """max over f_theta of KL(f_theta || f_p) = log(1 / min_c f_p(c|x)): all mass on f_p's least likely class."""
    return -F.log_softmax(ref_logits.float(), -1).min(-1).values


def rga_lambda(logits, ref_logits, alpha: float, direction: str = "current_poisoned", mode: str = "batch",
               floor: str = "keep"):
    """lambda = exp(-alpha * KL), computed without gradient: it scales the ascent, it is not optimised.

    With the paper's KL(f_theta || f_p) the KL is capped (kl_cap), so lambda never falls below
    exp(-alpha * cap) = min_c f_p(c|x)^alpha: once CE(D_c) is fitted that floor keeps the ascent
    going. floor="remove" rescales lambda linearly so it is 1 at KL = 0 and 0 at the cap.
    KL(f_p || f_theta) has no cap, so there is no floor to remove.
    """
    with torch.no_grad():
        kl = kl_per_sample(logits.detach(), ref_logits, direction)
        reduce = (lambda t: t.mean()) if mode == "batch" else (lambda t: t)
        lam = torch.exp(-alpha * reduce(kl))
        if floor == "remove" and direction == "current_poisoned":
            low = torch.exp(-alpha * reduce(kl_cap(ref_logits)))
            lam = ((lam - low) / (1 - low).clamp_min(1e-12)).clamp(0, 1)
        return lam, kl


def auto_ascent_scale(rows: int, batch_size: int, lr: float, min_epoch_ascent: float) -> float:
    """rga.ascent_lr_scale=auto: the smallest scale >= 1 with lr * scale * ceil(rows / batch_size) >=
    min_epoch_ascent. Adam moves a coordinate by about lr * lambda a step whatever its gradient's size, so
    this product is how far an epoch of ascent can carry the model, and it grows with the rows flagged."""
    return max(1.0, min_epoch_ascent / (math.ceil(rows / batch_size) * lr))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    # sqrt with gradient 0 (not inf/NaN) at 0, e.g. when LoRA's B starts at zero.
    return torch.where(x > 0, torch.sqrt(x.clamp_min(1e-30)), torch.zeros_like(x))


def lora_update_norms(layers) -> torch.Tensor:
    """||scale * B @ A||_F for each adapted module, without forming the (out x in) update:
    ||BA||_F^2 = sum((B^T B) * (A A^T)), two r x r matrices."""
    sq = [(s * s) * ((B.t() @ B) * (A @ A.t())).sum() for _, B, A, s in layers]
    return _safe_sqrt(torch.stack(sq))


def tensor_distances(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.stack([torch.linalg.vector_norm(p - b) for p, b in pairs])


def combine_norms(norms: torch.Tensor, mode: str = "global") -> torch.Tensor:
    # The norm of the per-tensor norms is the global norm, and its gradient at 0 is 0 rather than NaN.
    return torch.linalg.vector_norm(norms) if mode == "global" else norms.sum()


def l2_to_base(pairs: list[tuple[torch.Tensor, torch.Tensor]], mode: str = "global") -> torch.Tensor:
    """||theta - theta_base||_2 over the paired tensors (global), or the sum of per-tensor norms."""
    return combine_norms(tensor_distances(pairs), mode)


# ---------------------------------------------------------------- the objective

@register
class RGA(Unlearning):
    """Robust Gradient Ascent (Eq. 6): -lambda * CE(D_p) + CE(D_c) + beta * ||theta - theta_base||_2."""

    name = "rga"
    needs_reference = True
    stop_signals = ("target_rate", "lambda")

    class Settings(Settings):
        alpha: float = Field(2.0, ge=0, description="decay rate of lambda = exp(-alpha * KL)")
        beta: float = Field(1e-2, ge=0, description="weight of ||theta - theta_base|| (paper: 1e-2 BERT, 1e-4 Llama-2; "
                            "authors' code 0.05)")
        kl_direction: Literal["current_poisoned", "poisoned_current"] = Field(
            "current_poisoned", description="KL(f_theta || f_p) (paper) or KL(f_p || f_theta) (authors' code)")
        lambda_mode: Literal["batch", "sample"] = Field(
            "batch", description="one lambda per batch from the mean KL, or one per sample")
        l2: Literal["global", "per_tensor"] = Field(
            "global", description="one L2 norm over all parameters (paper) or a sum of per-tensor norms (authors' code)")
        ascent_step: Literal["joint", "separate"] = Field(
            "separate", description="separate (default, departs from the paper): the ascent has its own Adam moments "
            "and lambda scales its step, not its gradient (AdamW's per-coordinate normalisation otherwise undoes lambda "
            "on weights only D_p uses, e.g. a rare trigger word's embedding, and RGA drifts into a trigger shift); "
            "joint: -lambda*CE(D_p) is part of the one loss AdamW steps on (paper)")
        lambda_floor: Literal["keep", "remove"] = Field(
            "keep", description="keep: lambda = exp(-alpha*KL) (paper); remove: rescale so lambda reaches 0 where "
            "KL(f_theta||f_p) reaches its maximum, log(1/min_c f_p(c|x)) (otherwise lambda never falls below "
            "min_c f_p(c|x)^alpha)")
        ascent_lr_scale: float | Literal["auto"] = Field(
            "auto", description="separate step only: the ascent's learning rate as a multiple of the loop's. Its step "
            "is lambda * lr * scale, so with few D_p rows (few ascent steps an epoch) and a low lr it can remove too "
            "little. auto: the smallest scale >= 1 that gives lr * scale * (ascent steps an epoch) >= min_epoch_ascent")
        min_epoch_ascent: float = Field(
            4e-4, gt=0, description="ascent_lr_scale=auto: the least lr * scale * steps an epoch. 4e-4 is the smallest "
            "at which the default removed the backdoor in experiments/rga-drift (the authors' setting, 2 steps an epoch "
            "at 2e-5, scale 10); at 2e-4 AddSent's stayed. Full SST-2 (9.4e-4) and the demo sizes (1.2e-3 and up) are "
            "above it and keep scale 1")

        @field_validator("ascent_lr_scale")
        @classmethod
        def _positive(cls, v):
            if v != "auto" and not v > 0:
                raise ValueError("rga.ascent_lr_scale must be 'auto' or a number > 0")
            return v

        @model_validator(mode="after")
        def _scale_needs_separate(self):
            if self.ascent_step != "separate":
                if self.ascent_lr_scale not in (1, "auto"):
                    raise ValueError("rga.ascent_lr_scale applies to the separate ascent step only; the joint step's "
                                     "ascent shares the loop's AdamW (set rga.ascent_step=separate or the scale to 1)")
                self.__dict__["ascent_lr_scale"] = 1.0  # nothing to scale: recorded as what ran (no re-validation)
            return self

    def __init__(self, settings=None, early_stop=None, stage=None):
        super().__init__(settings, early_stop, stage)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.lora = []
        self._moments: dict = {}
        self._ascent_steps = 0
        self._accelerator = None
        self._pending = None  # [params, summed ascent gradients, summed lambda, micro-batches] until the step
        self.scale = 1.0  # the ascent's lr multiple, resolved in setup()

    @property
    def needs_base(self) -> bool:
        return self.settings.beta > 0  # theta_base serves the L2 term only

    def setup(self, model, accelerator=None):
        super().setup(model, accelerator)
        from ..models import is_peft, lora_layers

        self.lora = lora_layers(model) if is_peft(model) else []
        self._model = model
        # The separate ascent's gradient is taken outside the loop's backward, where DDP would not average
        # it: on_optimiser_step averages it (and lambda) over the processes itself, through accelerate.
        self._accelerator = accelerator if accelerator is not None and accelerator.num_processes > 1 else None
        if self.settings.beta > 0 and not self.lora:
            if not self.base_params:
                raise BaseModelError(f"rga: theta_base is needed for the L2 term (rga.beta={self.settings.beta}); "
                                     f"{BASE_HINT}")
            named = dict(model.named_parameters())
            self.pairs = [(named[n], b.to(named[n].device)) for n, b in self.base_params.items() if n in named]
        self.scale = self._ascent_scale(accelerator)

    def _ascent_scale(self, accelerator=None) -> float:
        """The separate ascent's lr multiple; auto (auto_ascent_scale) raises it when the flagged rows are
        too few for an epoch of ascent to remove the backdoor: 64 rows at batch 32 and lr 2e-5 move 4e-5,
        and left the authors' setting's backdoor in experiments/rga-drift."""
        s = self.settings
        if s.ascent_step != "separate" or s.ascent_lr_scale != "auto":
            return float(s.ascent_lr_scale) if s.ascent_step == "separate" else 1.0
        if self.stage is None:
            raise ConfigError("rga.ascent_lr_scale=auto counts the ascent's steps an epoch with the unlearn config's "
                              "batch_size and lr: build the objective with build_objective(cfg), or set a number")
        # f_p's outputs hold one row per D_p sample: the rows the loop will ascend on.
        rows, batch, lr = len(self.ref_logits), self.stage.batch_size, self.stage.lr
        scale = auto_ascent_scale(rows, batch, lr, s.min_epoch_ascent)
        if scale > 1:
            (accelerator.print if accelerator is not None else print)(
                f"rga: ascent lr scale {scale:.3g} (auto: {math.ceil(rows / batch)} ascent steps an epoch at lr "
                f"{lr:g} move {math.ceil(rows / batch) * lr:.2g} < rga.min_epoch_ascent {s.min_epoch_ascent:g})")
        return scale

    def forget(self, logits, ce_each, batch, logs):
        s = self.settings
        lam, kl = rga_lambda(logits, self.reference(batch), s.alpha, s.kl_direction, s.lambda_mode, s.lambda_floor)
        logs.update({"lambda": lam.mean().item(), "kl": kl.mean().item()})
        if s.ascent_step == "separate":
            logs["ascent_lr_scale"] = self.scale
            self._accumulate_ascent(ce_each, lam)
            return 0.0
        return -(lam * ce_each.mean()) if s.lambda_mode == "batch" else -(lam * ce_each).mean()

    def _accumulate_ascent(self, ce_each, lam) -> None:
        """Gradient of the lambda-weighted CE(D_p), summed over the micro-batches of one optimiser step."""
        weights = (lam / lam.sum()).expand_as(ce_each) if lam.dim() else torch.full_like(ce_each, 1 / len(ce_each))
        params = [p for p in self._model.parameters() if p.requires_grad]
        grads = torch.autograd.grad((weights * ce_each).sum(), params, allow_unused=True)
        if self._pending is None:
            self._pending = [params, [None] * len(params), 0.0, 0]
        acc = self._pending[1]
        for i, g in enumerate(grads):
            if g is not None:
                acc[i] = g if acc[i] is None else acc[i] + g
        self._pending[2] += lam.mean().item()
        self._pending[3] += 1

    def on_optimiser_step(self, lr: float) -> None:
        """theta += lr * self.scale * mean(lambda) * Adam-normalised ascent gradient, with Adam moments
        of its own: lambda sets the size of the ascent's step on every coordinate, so Adam cannot cancel it."""
        if self._pending is None:
            return
        params, grads, lam_sum, n = self._pending
        self._pending = None
        grads = [None if g is None else g / n for g in grads]  # the mean over the step's micro-batches
        scale = torch.tensor(lam_sum / n)
        if self._accelerator is not None:  # every process takes the same step, as DDP's averaged one
            scale = self._accelerator.reduce(scale.to(self._accelerator.device), "mean").cpu()
            grads = [None if g is None else self._accelerator.reduce(g.contiguous(), "mean") for g in grads]
        b1, b2, eps = 0.9, 0.999, 1e-8  # torch's AdamW defaults, as the descent's optimiser
        self._ascent_steps += 1
        t = self._ascent_steps
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                m, v = self._moments.setdefault(p, (torch.zeros_like(p), torch.zeros_like(p)))
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
                p.add_(step, alpha=lr * self.scale * scale.item())

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.settings.ascent_step == "separate":
            # The ascent's own moments are not in accelerate's checkpoint: say so rather than resume silently.
            import warnings

            warnings.warn("rga.ascent_step=separate: resumed run restarts the ascent's Adam moments from zero")

    def regulariser(self, logs):
        s = self.settings
        if s.beta == 0 or not (self.lora or self.pairs):
            return 0.0
        # Under LoRA theta - theta_base is exactly the adapters' update; the head is left out either way.
        norms = lora_update_norms(self.lora) if self.lora else tensor_distances(self.pairs)
        dist = combine_norms(norms, s.l2)
        logs["l2"] = dist.item()
        return s.beta * dist
