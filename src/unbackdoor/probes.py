"""Probes of a finished model, beyond the paper's metrics (issue #18).

Relearning: is a removed backdoor gone, or only suppressed? A copy of the model is fine-tuned for a
few steps on K poisoned training samples (from D_p, labelled with the target) and, by default, K clean
rows (D_c) of every other class, and its LFR measured again. The clean rows keep the labels balanced:
K target-labelled rows alone teach "always the target" within a few steps (on SST-2 BadNets, 20 steps at
2e-5 took every model, ReTrain included, to CACC 50 and LFR 100), which says nothing about the trigger. A
never-poisoned model (ReTrain) learns something from K samples too, so the measure is the relearned LFR
minus ReTrain's after the same relearning (`relearn_lfr_excess_K`).

Trigger variants: the attack's trigger somewhere it never was in training (the start, the middle or
the end of the text), half of an AddSent sentence, and a rare word that was never a trigger (the
control). Each variant is a triggered test set built from the clean test rows with the attack's own
insertion code, and gets the full block of metrics (and, against ReTrain, its own verdict): does the
removal (or the shift) reach beyond the exact trigger that was unlearned?
"""

from __future__ import annotations

import copy
import math
import random
import tempfile
from typing import Literal, Optional

from pydantic import Field, PositiveInt

from .errors import ConfigError
from .settings import Settings

RARE_WORDS = ("tq", "mb", "zx", "qj")  # RIPPLe's rare-word pool and two more; the first that is no trigger is used


class ProbeConfig(Settings):
    relearn: list[PositiveInt] = Field(default_factory=list, description="relearn on K poisoned training samples "
                                       "and measure LFR again, for each K")
    relearn_mix: Literal["balanced", "poisoned"] = Field(
        "balanced", description="balanced: K poisoned rows and K clean rows (D_c) of every other class, so that the "
        "relearning teaches the trigger and not the target's prior; poisoned: the K poisoned rows alone")
    relearn_steps: int = Field(20, ge=1, description="optimiser steps of relearning (rounded up to whole passes over "
                               "the K samples)")
    relearn_lr: Optional[float] = Field(None, gt=0, description="relearning learning rate (default: the unlearning lr "
                                        "the model was made with, else its training lr, else 2e-5)")
    relearn_batch_size: int = Field(16, ge=1, description="relearning batch size: min(relearning rows, this)")
    trigger_variants: bool = Field(False, description="also evaluate on the trigger at the start, middle and end, "
                                   "half an AddSent sentence, and a rare word that was never a trigger")
    seed: int = Field(0, description="which K samples (the smaller K's are a subset of the larger), their order, and "
                      "the variants' random triggers and positions")

    @property
    def enabled(self) -> bool:
        return bool(self.relearn) or self.trigger_variants


# ---------------------------------------------------------------- trigger variants

def has_trigger_variants(attack: str) -> bool:
    """Whether the attack inserts a trigger phrase that variants can move or cut (BadNets, AddSent)."""
    from .attacks import ATTACKS
    from .attacks.insertion import InsertionPoisoner

    cls = ATTACKS.get(attack)
    return bool(cls) and issubclass(cls, InsertionPoisoner)


def trigger_variants(rows: list[dict], attack: dict, seed: int = 0) -> dict[str, list[dict]]:
    """Variant name -> `rows` with that variant of the attack's trigger inserted once, true labels kept.

    attack: the poisoned set's meta["attack"] (the poisoner's describe(): name and triggers)."""
    from .attacks.insertion import POSITIONS, insert_words

    name, triggers = attack.get("attack"), attack.get("triggers")
    if not (name and has_trigger_variants(name) and triggers):
        raise ConfigError(f"trigger variants: the attack '{name}' inserts no trigger phrase to move or cut; they exist "
                          "for the insertion attacks (badnets, addsent)")
    rng = random.Random(f"variants-{seed}")

    def build(phrases, position=None):
        out = []
        for r in rows:
            phrase = rng.choice(phrases)
            out.append({"text": insert_words(r["text"], phrase, rng, position), "label": r["label"],
                        "clean_text": r["text"], "trigger": phrase})
        return out

    variants = {pos: build(triggers, pos) for pos in POSITIONS}
    sentences = [t.split() for t in triggers if len(t.split()) > 1]
    if sentences:  # AddSent: does half the sentence still act?
        variants["first_half"] = build([" ".join(w[:len(w) // 2]) for w in sentences])
        variants["second_half"] = build([" ".join(w[len(w) // 2:]) for w in sentences])
    used = {w.lower() for t in triggers for w in t.split()}
    variants["other_word"] = build([next(w for w in RARE_WORDS if w not in used)])
    return variants


# ---------------------------------------------------------------- relearning

def relearn_sets(ps, ks, mix: str = "balanced", seed: int = 0) -> dict[int, list[dict]]:
    """The relearning rows for each K: K poisoned training rows (D_p) labelled with the target and, with mix
    'balanced', the first K clean training rows (D_c) of every other class, each pool in one seeded order, so
    that a smaller K's rows are part of a larger K's. A K the poisoned set cannot fill is a ConfigError."""
    ks = sorted(set(ks))
    if not ks:
        return {}
    rng = random.Random(f"relearn-{seed}")
    poisoned = [{"text": r["text"], "label": ps.target} for r in ps.poisoned]
    rng.shuffle(poisoned)
    pools = {"poisoned training samples (D_p)": poisoned}
    if mix == "balanced":
        for c, name in enumerate(ps.label_names):
            if c != ps.target:
                rows = [{"text": r["text"], "label": c} for r in ps.clean if r["label"] == c]
                rng.shuffle(rows)
                pools[f"clean training rows (D_c) of class {name!r}"] = rows
    for what, rows in pools.items():
        if ks[-1] > len(rows):
            raise ConfigError(f"relearn: K={ks[-1]} exceeds the {len(rows)} {what} of the poisoned set; choose K "
                              "between 1 and that" + ("" if what.startswith("poisoned") else
                                                      ", or relearn_mix: poisoned"))
    return {k: [r for rows in pools.values() for r in rows[:k]] for k in ks}


def relearn_lr(meta: dict) -> float:
    """The lr a model was unlearned with (else trained with) from its unbackdoor.json, else the unlearn default."""
    for section in ("unlearn_config", "train_config"):
        if (meta.get(section) or {}).get("lr"):
            return float(meta[section]["lr"])
    return 2e-5


def relearn(model, tokenizer, rows: list[dict], cfg: ProbeConfig, lr: float, max_length: int):
    """A copy of `model` fine-tuned on `rows` (CE, constant lr, AdamW) for cfg.relearn_steps steps or a few more."""
    from .batches import TokenizedSet
    from .objectives.ce import CrossEntropy
    from .training import LoopConfig, make_accelerator, train_loop

    batch = min(len(rows), cfg.relearn_batch_size)
    epochs = math.ceil(cfg.relearn_steps / math.ceil(len(rows) / batch))
    loop = LoopConfig(epochs=epochs, lr=lr, batch_size=batch, scheduler="constant", seed=cfg.seed, checkpoint_every=0,
                      group_by_length=False)
    twin = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="unbackdoor-relearn-") as work:
        train_loop(twin, tokenizer, CrossEntropy(), TokenizedSet(tokenizer, rows, max_length), loop, work,
                   accelerator=make_accelerator(), progress=False)
    return twin.eval()


# ---------------------------------------------------------------- both, on the evaluation splits

def probe_model(model, tokenizer, ps, cfg: ProbeConfig, *, lr: float, max_length: int = 128, batch_size: int = 128,
                splits=("test",), accelerator=None) -> dict[str, dict]:
    """{split: {relearn_lfr_K, relearn_cacc_K, relearn_pacc_K, ..., trigger_variants: {name: metrics}}}."""
    from .evaluation import evaluate, predict_labels

    sets = {s: (ps.dev_clean, ps.dev_triggered) if s == "dev" else (ps.test_clean, ps.test_triggered) for s in splits}
    sets = {s: v for s, v in sets.items() if v[0] and v[1]}
    out = {s: {} for s in sets}
    rows_for = relearn_sets(ps, cfg.relearn, cfg.relearn_mix, cfg.seed)  # a bad K fails before any work
    if cfg.trigger_variants:
        for s, (clean, _) in sets.items():
            clean_pred = predict_labels(model, tokenizer, clean, max_length, batch_size, accelerator)
            out[s]["trigger_variants"] = {
                name: {**evaluate(model, tokenizer, clean, rows, ps.target, ps.label_names, max_length, batch_size,
                                  accelerator, clean_pred=clean_pred), "example": rows[0]["text"]}
                for name, rows in trigger_variants(clean, ps.meta.get("attack", {}), cfg.seed).items()}
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    for k in sorted(set(cfg.relearn)):
        for s in sets:
            out[s]["relearn_lr"] = lr
        twin = relearn(unwrapped, tokenizer, rows_for[k], cfg, lr, max_length)
        for s, (clean, trig) in sets.items():
            m = evaluate(twin, tokenizer, clean, trig, ps.target, ps.label_names, max_length, batch_size)
            out[s].update({f"relearn_lfr_{k}": m["lfr"], f"relearn_cacc_{k}": m["cacc"], f"relearn_pacc_{k}": m["pacc"]})
        del twin
    return out
