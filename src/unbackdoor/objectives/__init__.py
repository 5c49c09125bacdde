"""Unlearning objectives, one module each: given a batch of poisoned samples D_p (with their
poisoned labels), a batch of clean samples D_c and the model, return the loss to minimise and the
values to log.

An objective declares its hyperparameters (`Settings`, a section of the unlearn config named
after it: `unlearn.rga.beta`, `--rga-beta`) and what it needs (`needs_reference`: the poisoned
model's outputs on D_p; `needs_base`: theta_base) next to its loss. Adding a module here that
registers a class adds a method everywhere (CLI, configs, grids, the Python API); another package
can do the same through the `unbackdoor.objectives` entry-point group. See docs/extending.md.
"""

from __future__ import annotations

from ..registry import Registry
from ..settings import Settings
from .base import EarlyStopConfig, Objective, Unlearning, class_weights

OBJECTIVES = Registry(__name__, "unbackdoor.objectives", "unlearning method", "methods")
register = OBJECTIVES.register


def build_objective(cfg, base_params: dict | None = None) -> Objective:
    """The objective of an unlearn config (`cfg.method`), with its own settings section."""
    cls = OBJECTIVES[cfg.method]
    obj = cls(getattr(cfg, cls.name, None), early_stop=cfg.early_stop, stage=cfg)
    if base_params is not None:
        obj.set_base(base_params)
    return obj


__all__ = ["OBJECTIVES", "register", "build_objective", "Objective", "Unlearning", "Settings", "EarlyStopConfig",
           "class_weights"]
