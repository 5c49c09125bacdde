"""The poisoner interface."""

from __future__ import annotations

import random
from typing import ClassVar

from ..settings import Settings


class Poisoner:
    name: ClassVar[str]
    Settings: ClassVar[type[Settings]] = Settings  # fields it adds to the attack config

    def __init__(self, cfg, data, generator=None, data_dir=None):
        """cfg: the attack config (its own settings are fields of it); data: the LabeledData attacked;
        generator: a paraphrasing callable passed in Python; data_dir: the datasets folder."""
        self.cfg = cfg

    def covers(self, text: str) -> bool:
        """Whether the trigger can be applied to `text` without a generator."""
        return True

    def apply(self, texts: list[str], rng: random.Random) -> list[str]:
        raise NotImplementedError

    def source(self, text: str) -> str:
        return self.name

    def describe(self) -> dict:
        return {"attack": self.name}
