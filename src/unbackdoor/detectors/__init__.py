"""Detectors, one module each: find the poisoned samples D_p of a training set, so unlearning
works end to end. Each returns a score per training sample (higher = more suspicious) and a flag.

A detector declares its own settings (`Settings`, fields of the detect config such as
`--umap-dim`) and what it needs (`needs_victim`, `needs_base`). Adding a module here that
registers a class adds a detector everywhere; another package can do the same through the
`unbackdoor.detectors` entry-point group (docs/extending.md).
"""

from __future__ import annotations

from ..registry import Registry
from ..settings import Settings
from .base import Detection, Detector, FlagShare, lowest_fraction, precision_recall_f1

DETECTORS = Registry(__name__, "unbackdoor.detectors", "detector", "detectors")
register = DETECTORS.register


def build_detector(cfg) -> Detector:
    return DETECTORS[cfg.detector](cfg)


__all__ = ["DETECTORS", "register", "build_detector", "Detection", "Detector", "FlagShare", "lowest_fraction",
           "precision_recall_f1", "Settings"]
