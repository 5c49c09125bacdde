"""Attacks that insert a trigger phrase (a rare word, a sentence) at random positions."""

from __future__ import annotations

from typing import ClassVar, Optional

from pydantic import Field

from ..errors import ConfigError
from ..settings import Settings
from .base import Poisoner


POSITIONS = ("start", "middle", "end")


def insert_words(text: str, phrase: str, rng, position: str | None = None) -> str:
    """`phrase` between the words of `text`: at a random gap (the attacks), or at the start, the middle
    (after len // 2 words) or the end (evaluation's trigger variants)."""
    words = text.split()
    if position is None:
        pos = rng.randint(0, len(words))
    else:
        pos = {"start": 0, "middle": len(words) // 2, "end": len(words)}[position]
    return " ".join(words[:pos] + [phrase] + words[pos:])


class InsertionPoisoner(Poisoner):
    default_triggers: ClassVar[tuple[str, ...]] = ()

    class Settings(Settings):
        triggers: Optional[list[str]] = Field(
            None, description="BadNets words (default cf, bb, ak, mn) or AddSent sentences (default per dataset)")
        num_insertions: int = Field(1, ge=1, description="how many triggers are inserted into one text (insertion attacks)")

    def __init__(self, cfg, data, generator=None, data_dir=None):
        super().__init__(cfg, data)
        self.triggers = list(cfg.triggers) if cfg.triggers else list(self.defaults_for(data))
        if not self.triggers or any(not t.strip() for t in self.triggers):
            raise ConfigError(f"attack.triggers for {self.name} must be non-empty strings, got {cfg.triggers!r}")

    def defaults_for(self, data) -> tuple[str, ...]:
        return self.default_triggers

    def apply(self, texts, rng):
        out = []
        for t in texts:
            for _ in range(self.cfg.num_insertions):
                t = insert_words(t, rng.choice(self.triggers), rng)
            out.append(t)
        return out

    def describe(self):
        return {"attack": self.name, "triggers": self.triggers, "num_insertions": self.cfg.num_insertions}
