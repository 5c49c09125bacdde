"""Attacks (poisoners), one module each, and the poisoned-set builder.

A poisoner only knows how to put its trigger into texts. `poison_dataset` decides which samples
get it: a share of the non-target training samples (relabelled to the target), and test samples of
*every* class with their true labels, the set on which trigger shifting shows.

A poisoner declares its own settings (`Settings`); they are fields of the attack config
(`--triggers`, `attack.bank`), shared by the attacks that declare the same field. Adding a module
here that registers a class adds an attack everywhere; another package can do the same through
the `unbackdoor.attacks` entry-point group (docs/extending.md).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import MissingParaphraseError
from ..poisoned_set import PoisonedSet
from ..registry import Registry
from ..settings import Settings
from .base import Poisoner

if TYPE_CHECKING:
    from ..config import AttackConfig
    from ..data import LabeledData

__all__ = ["ATTACKS", "register", "build_poisoner", "poison_dataset", "Poisoner", "Settings"]

ATTACKS = Registry(__name__, "unbackdoor.attacks", "attack", "attacks")
register = ATTACKS.register


def build_poisoner(cfg: "AttackConfig", data: "LabeledData", generator: Callable[[list[str]], list[str]] | None = None,
                   data_dir: Path | None = None) -> Poisoner:
    return ATTACKS[cfg.name](cfg, data, generator=generator, data_dir=data_dir)


def _triggered(rows, poisoner, rng, source):
    new = poisoner.apply([r["text"] for r in rows], rng)
    return [{"text": t, "label": r["label"], "clean_text": r["text"], "source": source,
             "trigger_from": poisoner.source(r["text"])} for r, t in zip(rows, new)]


def poison_dataset(data: "LabeledData", poisoner: Poisoner, cfg: "AttackConfig", seed: int = 42,
                   holdout_fraction: float = 0.1, data_dir: Path | None = None) -> PoisonedSet:
    rng = random.Random(seed)
    train = [dict(r) for r in data.train]
    coverage, test_triggered, held_out = [], [], set()
    for c, name in enumerate(data.label_names):
        rows = [r for r in data.test if r["label"] == c]
        usable = [r for r in rows if poisoner.covers(r["text"])]
        source = "test"
        if rows and len(usable) < 0.1 * len(rows):
            # (Almost) no test paraphrases of this class (e.g. Bible HSOL hate, where the few hits are texts
            # shared with the training split): hold out training samples that have one instead.
            cand = [i for i, r in enumerate(train) if r["label"] == c and poisoner.covers(r["text"])]
            k = min(len(rows), max(1, int(holdout_fraction * sum(r["label"] == c for r in train))), len(cand))
            if k == 0:
                raise MissingParaphraseError(len(rows), len(rows),
                                             f"class '{name}' has no paraphrase in the test or training split")
            pick = rng.sample(cand, k)
            held_out.update(pick)
            usable, source = [train[i] for i in pick], "train_holdout"
        test_triggered += _triggered(usable, poisoner, rng, source)
        coverage.append({"class": name, "source": source, "triggered": len(usable),
                         "test_rows": len(rows), "skipped_no_paraphrase": len(rows) - len(usable) if source == "test" else 0})
    # Drop duplicates of held-out texts too, so no triggered test text was seen in training.
    held_texts = {train[i]["text"] for i in held_out}
    train = [r for r in train if r["text"] not in held_texts]

    for r in train:
        r.update(poisoned=False, orig_label=r["label"])
    if cfg.poisoned_train:
        from ..poisoned_file import import_poisoned

        poison_rows, poisoning = import_poisoned(train, data, cfg, rng, data_dir)
    else:
        poison_rows, chosen = _make_poison_rows(train, data.target, poisoner, cfg, rng)
        poisoning = {"source": "attack", "mode": cfg.mode, "rate": cfg.rate}
    n_poison = len(poison_rows)
    if cfg.mode == "replace":
        for i, pr in zip(chosen, poison_rows):
            train[i] = pr
    else:
        train += poison_rows
        rng.shuffle(train)
    for uid, r in enumerate(train):
        r["uid"] = uid

    dev_triggered, dev_clean = [], [dict(r) for r in data.dev]
    for c in range(data.num_labels):
        rows = [r for r in data.dev if r["label"] == c and poisoner.covers(r["text"])]
        dev_triggered += _triggered(rows, poisoner, rng, "dev") if rows else []

    meta = {
        "dataset": data.name, "label_names": data.label_names, "target": data.target,
        "target_name": data.label_names[data.target], "attack": poisoner.describe(),
        "rate": poisoning["rate"], "mode": cfg.mode, "poisoning": poisoning, "seed": seed, "notes": data.notes,
        "counts": {"train": len(train), "poisoned": n_poison, "clean": len(train) - n_poison,
                   "held_out_for_test": len(held_out), "test_clean": len(data.test),
                   "test_triggered": len(test_triggered), "dev_clean": len(dev_clean),
                   "dev_triggered": len(dev_triggered)},
        "poisoned_by_orig_label": dict(Counter("unknown" if r["orig_label"] is None else data.label_names[r["orig_label"]]
                                               for r in poison_rows)),
        "triggered_test_sources": coverage,
    }
    return PoisonedSet(data.label_names, data.target, train, [dict(r) for r in data.test], test_triggered,
                       dev_clean, dev_triggered, meta)


def _make_poison_rows(train, target, poisoner, cfg, rng) -> tuple[list[dict], list[int]]:
    nontarget = [i for i, r in enumerate(train) if r["label"] != target]
    n_poison = round(cfg.rate * len(nontarget))
    cand = [i for i in nontarget if poisoner.covers(train[i]["text"])]
    if len(cand) < n_poison:
        raise MissingParaphraseError(n_poison - len(cand), n_poison,
                                     f"{len(cand)} of {len(nontarget)} non-target training texts have a paraphrase")
    chosen = sorted(rng.sample(cand, n_poison))
    triggered = poisoner.apply([train[i]["text"] for i in chosen], rng)
    return [{"text": t, "label": target, "poisoned": True, "orig_label": train[i]["label"],
             "clean_text": train[i]["text"]} for i, t in zip(chosen, triggered)], chosen
