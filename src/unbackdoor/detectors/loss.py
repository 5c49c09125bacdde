"""Loss (anti-backdoor learning's observation): fine-tune the clean base briefly on the training
set; the rows with the lowest loss are flagged, as backdoor samples are learned first."""

from __future__ import annotations

import tempfile
from typing import Optional

import torch
from pydantic import Field

from . import register
from .base import Detection, Detector, FlagShare, lowest_fraction


@register
class LossDetector(Detector):
    name = "loss"
    needs_victim = False  # it trains theta_base afresh; the victim only tells which base that is
    needs_base = True

    class Settings(FlagShare):
        epochs: int = Field(1, ge=1, description="loss: epochs of fine-tuning from the clean base; then the lowest-loss "
                            "rows are flagged (the trigger must get learned first: on MiniLM/SST-2, 3 epochs at 1e-4)")
        lr: float = Field(2e-5, gt=0, description="loss: learning rate of that fine-tuning")
        base_model: Optional[str] = Field(None, description="loss: the clean model the victim was fine-tuned from "
                                          "(default: from its unbackdoor.json or config)")

    def detect(self, rows, label_names, model=None, tokenizer=None, base=None):
        from ..batches import Collator, TokenizedSet, predict_logits
        from ..models import load_classifier
        from ..objectives.ce import CrossEntropy
        from ..training import LoopConfig, make_accelerator, set_seed, train_loop

        base_name, source = base
        set_seed(self.cfg.seed)
        model, tok, _ = load_classifier(base_name, len(label_names), label_names, for_training=True)
        data = TokenizedSet(tok, rows, self.cfg.max_length)
        accelerator = make_accelerator()  # the loop moves the model to its device: the scoring pass must follow
        with tempfile.TemporaryDirectory() as tmp:
            train_loop(model, tok, CrossEntropy(), data, LoopConfig.of(self.cfg, checkpoint_every=0), tmp,
                       accelerator=accelerator, progress=True)
        logits = predict_logits(model, data, Collator(tok), self.cfg.eval_batch_size, accelerator)
        losses = torch.nn.functional.cross_entropy(logits, torch.tensor(data.labels), reduction="none").numpy()
        # One snapshot after the last epoch. Averaging each row's loss over the epochs was tried and is
        # worse on SST-2 BadNets (precision 0.16 vs 0.37 at 3 epochs, lr 1e-4): before the trigger is
        # learned the poisoned rows are mid-loss (they contradict their text's sentiment).
        return Detection(-losses, lowest_fraction(losses, self.cfg.fraction),
                         {"epochs": self.cfg.epochs, "fraction": self.cfg.fraction, "base_model": base_name,
                          "base_model_source": source, "mean_loss": round(float(losses.mean()), 4)})
