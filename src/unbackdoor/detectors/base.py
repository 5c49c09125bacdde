"""The detector interface, its result, and what the detectors share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import Field

from ..settings import Settings


@dataclass
class Detection:
    scores: np.ndarray  # per training row, higher = more suspicious
    flags: np.ndarray   # per training row, True = flagged poisoned
    info: dict = field(default_factory=dict)
    metrics: dict | None = None  # precision, recall, F1 against the truth, when the rows carry it

    def split(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """(flagged rows, the others): the forget and retain sets to unlearn with."""
        return ([r for r, f in zip(rows, self.flags, strict=True) if f],
                [r for r, f in zip(rows, self.flags, strict=True) if not f])


class Detector:
    name: ClassVar[str]
    Settings: ClassVar[type[Settings]] = Settings  # fields it adds to the detect config
    needs_victim: ClassVar[bool] = True  # reads the poisoned model (its features, its outputs)
    needs_base: ClassVar[bool] = False  # needs theta_base, the clean model the victim was fine-tuned from

    def __init__(self, cfg):
        """cfg: the detect config; the detector's own settings are fields of it."""
        self.cfg = cfg

    def detect(self, rows: list[dict], label_names: list[str], model=None, tokenizer=None,
               base: tuple[str, str] | None = None) -> Detection:
        """rows: the training set; model, tokenizer: the victim (when needs_victim); base: (theta_base,
        where it came from) (when needs_base)."""
        raise NotImplementedError


class FlagShare(Settings):
    fraction: float = Field(0.25, gt=0, lt=1, description="loss, onion: share of the training set to flag (lowest "
                            "loss / largest perplexity drop)")


def lowest_fraction(losses: np.ndarray, fraction: float) -> np.ndarray:
    """Flag the `fraction` of samples with the lowest values (loss: backdoor samples are learned first)."""
    k = max(1, int(round(fraction * len(losses))))
    flags = np.zeros(len(losses), bool)
    flags[np.argsort(losses, kind="stable")[:k]] = True
    return flags


def precision_recall_f1(flags, truth) -> dict:
    flags, truth = np.asarray(flags, bool), np.asarray(truth, bool)
    tp, fp, fn = int((flags & truth).sum()), int((flags & ~truth).sum()), int((~flags & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "flagged": int(flags.sum()), "poisoned": int(truth.sum())}
