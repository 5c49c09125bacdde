"""Fine-Pruning (Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks"), for transformer encoders: before fine-tuning, prune the feed-forward neurons of the last
layers that are least active on clean data (D_c), then fine-tune on D_c with them held at zero.

Liu et al. prune the channels of the last convolutional layer by mean activation on clean inputs;
here a "neuron" is one of a layer's FFN intermediate units (after its activation function), its mean
taken over the non-padding tokens of D_c. A pruned neuron's row of the up projection (weight and
bias) and column of the down projection are zeroed and their gradients masked, so AdamW (whose
moments then stay 0, and whose decoupled weight decay keeps 0 at 0) never moves them again and the
saved model is the pruned one.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch.utils.data import DataLoader

from ..batches import forward_logits
from ..errors import ConfigError
from ..settings import Settings
from . import register
from .finetune import FineTune


def ffn_layers(model) -> list[tuple[str, torch.nn.Module, torch.nn.Linear, torch.nn.Linear]]:
    """(name, intermediate block, up projection, down projection) of each BERT-like layer, in depth
    order: BERT, RoBERTa, MiniLM, ELECTRA, ... have `intermediate.dense` (-> activation) and `output.dense`."""
    found = []
    for name, m in model.named_modules():
        block = getattr(m, "intermediate", None)
        up, down = getattr(block, "dense", None), getattr(getattr(m, "output", None), "dense", None)
        if isinstance(up, torch.nn.Linear) and isinstance(down, torch.nn.Linear) and up.out_features == down.in_features:
            found.append((name, block, up, down))
    if not found:
        raise ConfigError(f"fineprune: found no BERT-like feed-forward layers (a layer with intermediate.dense and "
                          f"output.dense) in {type(model).__name__}; it prunes encoders such as BERT, RoBERTa and "
                          "MiniLM, not this architecture")
    return found


@torch.no_grad()
def mean_activations(model, blocks: list[torch.nn.Module], dataset, collator, batch_size: int) -> list[torch.Tensor]:
    """Each block's output (the FFN neurons after their activation), averaged over the non-padding tokens
    of `dataset`. Every process reads the whole set, so all prune the same neurons."""
    sums = [None] * len(blocks)
    mask, tokens = {}, 0

    def hook(i):
        def record(module, inputs, out):
            m = mask["m"].to(out.dtype).unsqueeze(-1)
            s = (out * m).sum((0, 1)).float()
            sums[i] = s if sums[i] is None else sums[i] + s
        return record

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[]):
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator):
                batch = {k: v.to(device) for k, v in batch.items()}
                mask["m"] = batch["attention_mask"]
                tokens += int(batch["attention_mask"].sum())
                forward_logits(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [s / max(tokens, 1) for s in sums]


def prune(up: torch.nn.Linear, down: torch.nn.Linear, idx: torch.Tensor) -> None:
    """Zero neurons `idx` (up's rows and bias, down's columns) and keep their gradients at zero."""
    keep = torch.ones(up.out_features, device=up.weight.device, dtype=up.weight.dtype)
    keep[idx] = 0
    with torch.no_grad():
        up.weight.mul_(keep[:, None])
        down.weight.mul_(keep[None, :])
        if up.bias is not None:
            up.bias.mul_(keep)
    up.weight.register_hook(lambda g: g * keep[:, None])
    down.weight.register_hook(lambda g: g * keep[None, :])
    if up.bias is not None:
        up.bias.register_hook(lambda g: g * keep)


@register
class FinePrune(FineTune):
    """Fine-Pruning: prune the least active FFN neurons of the last layers on D_c, then fine-tune on D_c."""

    name = "fineprune"

    class Settings(Settings):
        ratio: float = Field(0.2, gt=0, lt=1, description="share of each pruned layer's FFN neurons to prune, the "
                             "least active on D_c")
        layers: int = Field(1, ge=1, description="prune the last k encoder layers (Liu et al.: the last layer)")

    def __init__(self, settings=None, early_stop=None, stage=None):
        super().__init__(settings, early_stop, stage)
        self.pruned: dict[str, list[int]] = {}

    def setup(self, model, accelerator=None):
        super().setup(model, accelerator)
        if self.sets is None or self.sets.retain is None:
            raise ConfigError("fineprune measures activations on D_c: call data_from() with the clean set first")
        layers = ffn_layers(model)
        if self.settings.layers > len(layers):
            raise ConfigError(f"fineprune.layers={self.settings.layers}, but the model has {len(layers)} layers")
        chosen = layers[-self.settings.layers:]
        # Called before a checkpoint is restored: a resumed run measures the victim again and prunes the same neurons.
        means = mean_activations(model, [b for _, b, _, _ in chosen], self.sets.retain, self.sets.collator,
                                 self.sets.batch_size)
        done = []
        for (name, _, up, down), mean in zip(chosen, means):
            idx = torch.argsort(mean, stable=True)[:max(1, round(self.settings.ratio * up.out_features))]
            prune(up, down, idx)
            self.pruned[name] = sorted(idx.tolist())
            done.append(f"{len(idx)} of {up.out_features} in {name}")
        if accelerator is not None:
            accelerator.print(f"fineprune: pruned the least active FFN neurons on D_c: {'; '.join(done)}")
