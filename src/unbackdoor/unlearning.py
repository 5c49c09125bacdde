"""Objectives: given a batch of poisoned samples D_p (with their poisoned labels), a batch of clean
samples D_c and the model, return the loss to minimise and the values to log.

GA, NPO and RGA differ only here; the loop in `training.py` runs them all. The poisoned model's
outputs on D_p are computed once before unlearning and looked up by sample index, so no second
model is kept in memory or run forward.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from .config import EarlyStopConfig, UnlearnConfig
from .errors import BASE_HINT, BaseModelError, ConfigError
from .training import forward_logits, predict_logits

OBJECTIVES: dict[str, type["Objective"]] = {}


def register(cls):
    OBJECTIVES[cls.name] = cls
    return cls


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


def npo_loss(ce_theta: torch.Tensor, ce_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """-(2/beta) * mean(logsigmoid(beta * (CE_theta - CE_ref))) = (2/beta) E[log(1 + (pi_theta/pi_ref)^beta)]."""
    return -(2.0 / beta) * F.logsigmoid(beta * (ce_theta - ce_ref)).mean()


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


# ---------------------------------------------------------------- objectives

class Objective:
    name: ClassVar[str]
    uses_clean: ClassVar[bool] = True  # pairs each step with a random D_c batch
    needs_reference: ClassVar[bool] = False
    class_weight: torch.Tensor | None = None  # per-class weights of the CE on the training / D_c rows

    def __init__(self, cfg: UnlearnConfig | None = None, early_stop: EarlyStopConfig | None = None):
        self.cfg = cfg or UnlearnConfig()
        self.early = early_stop or self.cfg.early_stop
        self.ref_logits: torch.Tensor | None = None
        self._reference_data = None
        self._below = 0
        self.stop_reason = None

    def reference_from(self, dataset, collator, batch_size: int) -> None:
        """Have setup() compute f_p's outputs on `dataset` (D_p), in dataset order."""
        self._reference_data = (dataset, collator, batch_size)

    def setup(self, model, accelerator=None) -> None:
        if self.needs_reference and self.ref_logits is None and self._reference_data is not None:
            # The loop calls setup after accelerator.prepare (so on its device, in its precision) and
            # before a checkpoint is restored (so these are still the poisoned model's outputs).
            self.set_reference(predict_logits(model, *self._reference_data, accelerator=accelerator))
        if self.needs_reference and self.ref_logits is None:
            raise ConfigError(f"{self.name} needs the poisoned model's outputs on D_p: call reference_from() or "
                              "set_reference() before training")
        if self.early.criterion == "lambda" and self.name != "rga":
            raise ConfigError(f"early_stop.criterion=lambda needs method rga, not {self.name}")

    def set_reference(self, logits: torch.Tensor) -> None:
        self.ref_logits = logits.detach().float()

    def reference(self, batch) -> torch.Tensor:
        return self.ref_logits.to(batch["idx"].device)[batch["idx"]]

    def __call__(self, model, batch, clean):
        raise NotImplementedError

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

    def should_stop(self) -> bool:
        return self.stop_reason is not None

    def state_dict(self) -> dict:
        return {"below": self._below}

    def load_state_dict(self, state: dict) -> None:
        self._below = state.get("below", 0)


@register
class CrossEntropy(Objective):
    """Plain fine-tuning: the victim on D (poisoned), and ReTrain on D_c."""

    name = "ce"
    uses_clean = False

    def __call__(self, model, batch, clean):
        loss = _ce(forward_logits(model, batch), batch["labels"], self.class_weight)
        return loss, {"loss": loss.item()}


def _ce(logits, labels, weight=None):
    return F.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits))


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Inverse class frequency, n / (k * n_c) (scikit-learn's "balanced"): each class then weighs as
    much in the loss as if the classes were equally frequent. An absent class gets 0."""
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_classes).double()
    w = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return w.float()


class Unlearning(Objective):
    """CE(D_c) + forget(D_p) + regulariser: GA, NPO and RGA differ only in the last two."""

    def forget(self, logits, ce_each, batch, logs) -> torch.Tensor:
        raise NotImplementedError

    def regulariser(self, logs) -> torch.Tensor | float:
        return 0.0

    def __call__(self, model, batch, clean):
        logits = forward_logits(model, batch)
        ce_each = F.cross_entropy(logits, batch["labels"], reduction="none")  # CE w.r.t. the poisoned label
        logs = {"ce_p": ce_each.mean().item()}
        forget = self.forget(logits, ce_each, batch, logs)
        ce_c = _ce(forward_logits(model, clean), clean["labels"], self.class_weight)
        loss = ce_c + forget + self.regulariser(logs)
        logs.update(loss=loss.item(), ce_c=ce_c.item())
        self._watch(logits, batch, logs)
        return loss, logs


@register
class GradientAscent(Unlearning):
    """GA (Eq. 3): CE(D_c) - CE(D_p)."""

    name = "ga"

    def forget(self, logits, ce_each, batch, logs):
        return -ce_each.mean()


@register
class NPO(Unlearning):
    """Negative preference optimisation against the poisoned model as reference."""

    name = "npo"
    needs_reference = True

    def forget(self, logits, ce_each, batch, logs):
        ce_ref = F.cross_entropy(self.reference(batch), batch["labels"], reduction="none")
        out = npo_loss(ce_each, ce_ref, self.cfg.npo.beta)
        logs["npo"] = out.item()
        return out


@register
class RGA(Unlearning):
    """Robust Gradient Ascent (Eq. 6): -lambda * CE(D_p) + CE(D_c) + beta * ||theta - theta_base||_2."""

    name = "rga"
    needs_reference = True

    def __init__(self, cfg=None, early_stop=None, base_params: dict[str, torch.Tensor] | None = None):
        super().__init__(cfg, early_stop)
        self.base_params = base_params
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.lora = []
        self._moments: dict = {}
        self._ascent_steps = 0

    def setup(self, model, accelerator=None):
        super().setup(model, accelerator)
        from .models import is_peft, lora_layers

        self.lora = lora_layers(model) if is_peft(model) else []
        self._model = model
        if self.cfg.rga.ascent_step == "separate" and accelerator is not None and accelerator.num_processes > 1:
            # Its gradients are taken outside the loop's backward, so DDP would not average them.
            raise ConfigError("rga.ascent_step=separate runs on one process only")
        if self.cfg.rga.beta > 0 and not self.lora:
            if not self.base_params:
                raise BaseModelError(f"rga: theta_base is needed for the L2 term (rga.beta={self.cfg.rga.beta}); "
                                     f"{BASE_HINT}")
            named = dict(model.named_parameters())
            self.pairs = [(named[n], b.to(named[n].device)) for n, b in self.base_params.items() if n in named]

    def forget(self, logits, ce_each, batch, logs):
        r = self.cfg.rga
        lam, kl = rga_lambda(logits, self.reference(batch), r.alpha, r.kl_direction, r.lambda_mode, r.lambda_floor)
        logs.update({"lambda": lam.mean().item(), "kl": kl.mean().item()})
        if r.ascent_step == "separate":
            self._ascend(ce_each, lam)
            return 0.0
        return -(lam * ce_each.mean()) if r.lambda_mode == "batch" else -(lam * ce_each).mean()

    def _ascend(self, ce_each, lam) -> None:
        """theta += lr * mean(lambda) * Adam-normalised grad of the lambda-weighted CE(D_p), with moments of
        its own: lambda sets the size of the ascent's step on every coordinate, so Adam cannot cancel it."""
        if self.cfg.scheduler != "constant":
            raise ConfigError("rga.ascent_step=separate steps the ascent at unlearn.lr itself; it needs scheduler=constant")
        scale = lam.mean()
        weights = (lam / lam.sum()).expand_as(ce_each) if lam.dim() else torch.full_like(ce_each, 1 / len(ce_each))
        params = [p for p in self._model.parameters() if p.requires_grad]
        grads = torch.autograd.grad((weights * ce_each).sum(), params, allow_unused=True)
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
                p.add_(step, alpha=self.cfg.lr * scale.item())

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.cfg.rga.ascent_step == "separate":
            # The ascent's own moments are not in accelerate's checkpoint: say so rather than resume silently.
            import warnings

            warnings.warn("rga.ascent_step=separate: resumed run restarts the ascent's Adam moments from zero")

    def regulariser(self, logs):
        r = self.cfg.rga
        if r.beta == 0 or not (self.lora or self.pairs):
            return 0.0
        # Under LoRA theta - theta_base is exactly the adapters' update; the head is left out either way.
        norms = lora_update_norms(self.lora) if self.lora else tensor_distances(self.pairs)
        dist = combine_norms(norms, r.l2)
        logs["l2"] = dist.item()
        return r.beta * dist


def build_objective(cfg: UnlearnConfig, **kwargs) -> Objective:
    name = "ce" if cfg.method == "retrain" else cfg.method
    if name not in OBJECTIVES or name == "ce" and cfg.method != "retrain":
        valid = sorted(set(OBJECTIVES) - {"ce"} | {"retrain"})
        raise ConfigError(f"unknown unlearning method '{cfg.method}'; valid methods: {', '.join(valid)}")
    cls = OBJECTIVES[name]
    return cls(cfg, **kwargs) if cls is RGA else cls(cfg)
