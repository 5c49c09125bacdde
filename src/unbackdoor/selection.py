"""Which unlearning epoch to keep, decided only from what a defender has (issue 13).

RGA removes the backdoor early and, trained on, can drift into a partial trigger shift. Picking
the epoch by the triggered test set would use what a defender never has: triggered rows of every
class with their true labels. A defender has D_p as flagged (triggered rows labelled with the
attacker's target), D_c, and clean dev rows. So:

- a fixed, seeded slice of D_p is held out of the ascent. Its rows carry the trigger but were never
  ascended on, so the share still predicted as the flagged label measures whether the *trigger*
  lost its pull, not whether the model memorised "not this row";
- clean accuracy on the clean dev rows (or, with none, on a held-out slice of D_c) guards against
  a collapsed model, which also stops predicting the target;
- the selected epoch is the first that passes both. Drift grows with further epochs, so the
  earliest epoch that removed the backdoor is the least drifted one the rule can name; the rule
  cannot see the trigger shift itself (D_p has no triggered rows of the target class).

tau="auto" is (1 - the victim's clean accuracy) + margin: a model without a backdoor predicts the
target for a triggered row of another class about as often as it errs on clean rows.
tau="clean_pull" (opt-in: it beat auto on replay, not on three fresh full-data cells) is, at each check, the
*current* model's share of clean rows of the other classes it predicts as the flagged label + margin: the
held-out rate rises and falls with the model's own lean to the target, and a fixed tau then picks an epoch
where the model leans away (experiments/rga-drift/README.md, the `corrected` replay).

Nothing here reads a triggered dev or test set; tests/test_selection.py enforces it.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from typing import Literal, Union

from pydantic import Field, field_validator

from .errors import ConfigError
from .settings import Settings

DECISION = ("selected", "reason", "metrics")  # an epoch entry's keys that are the decision, not statistics
MIN_HELDOUT = 8  # fewer rows make the rate too coarse to compare with tau (steps of 1/8 already)


class SelectConfig(Settings):
    action: Literal["stop", "keep", "off"] = Field(
        "stop", description="pick the epoch to keep from held-out D_p and clean dev rows only (no triggered test "
        "set): stop = end unlearning at the selected epoch and keep that model; keep = train every epoch, save "
        "the selected model to <out>/selected and evaluate it too; off = train on all of D_p, no selection")
    holdout: float = Field(0.1, gt=0, le=0.5, description="share of D_p (at least 8 rows) held out of the ascent to "
                           "measure the backdoor on; with fewer than 16 rows in D_p selection is off")
    every: int = Field(1, ge=1, description="check every k epochs (and at the last)")
    tau: Union[Literal["auto", "clean_pull"], float] = Field(
        "auto", description="largest share of held-out D_p still predicted as its flagged label; auto = the victim's "
        "clean error on the same clean rows + margin; clean_pull = at each check, the current model's share of clean "
        "rows of other classes predicted as the flagged label + margin (opt-in; not better than auto on fresh runs)")
    margin: float = Field(0.10, ge=0, le=1, description="added to the victim's clean error for tau=auto, and to the "
                          "checked model's clean pull for tau=clean_pull")
    max_acc_drop: float = Field(0.05, ge=0, le=1, description="an epoch qualifies only if its clean accuracy is at "
                                "least the victim's minus this (a collapsed model also stops predicting the target)")
    @field_validator("action", mode="before")
    @classmethod
    def _off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` (action: off, -s select.action=off) as false

    @field_validator("tau", mode="before")
    @classmethod
    def _tau(cls, v):
        # One message instead of pydantic's one per member of the union.
        try:
            ok = v in ("auto", "clean_pull") or (not isinstance(v, bool) and 0 <= float(v) <= 1)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError("tau must be 'auto', 'clean_pull' or a share in [0, 1]")
        return v if v in ("auto", "clean_pull") else float(v)

    dev_subset: int = Field(500, ge=0, description="clean rows for the accuracy check: a fixed class-stratified "
                            "subset of k dev rows (0 = all); without dev rows, a held-out slice of D_c of at most k")


# ---------------------------------------------------------------- the rule, on numbers alone

def auto_tau(victim: dict, margin: float) -> float:
    """tau="auto": the victim's clean error + margin."""
    return 1 - victim["clean_acc"] + margin


def threshold(stats: dict, tau, margin: float) -> float:
    """The held-out rate a check must not exceed: tau itself, or with tau="clean_pull" the checked model's
    clean_target_rate + margin."""
    return stats["clean_target_rate"] + margin if tau == "clean_pull" else tau


def qualifies(stats: dict, tau: float, min_acc: float) -> tuple[bool, str]:
    # Compared at the 6 decimals the statistics are stored with: tau and min_acc are sums of such shares and a
    # margin, and 0.1 + 0.1 is 0.19999999999999998, so without rounding a rate of exactly 0.2 (12 of 60 rows)
    # failed tau = 0.2 (seen on AG News HiddenKiller, experiments/agnews-all-attacks/rga-variants.md).
    rate, acc = round(stats["heldout_target_rate"], 6), round(stats["clean_acc"], 6)
    tau, min_acc = round(tau, 6), round(min_acc, 6)
    if rate > tau:
        return False, f"held-out D_p target rate {rate:.3f} > tau {tau:.3f}"
    if acc < min_acc:
        return False, f"clean accuracy {acc:.3f} < {min_acc:.3f} (collapsed)"
    return True, f"held-out D_p target rate {rate:.3f} <= tau {tau:.3f}, clean accuracy {acc:.3f} >= {min_acc:.3f}"


def first_qualifying(epochs: list[dict], tau, min_acc: float, *, margin: float) -> tuple[int | None, str]:
    """(the first epoch whose statistics qualify, why) or (None, why none did). `epochs`: dicts with
    epoch, heldout_target_rate and clean_acc (and clean_target_rate for tau="clean_pull"), in epoch order.
    margin is required, as in threshold(): a default of 0 would silently misjudge tau="clean_pull"."""
    for stats in epochs:
        ok, why = qualifies(stats, threshold(stats, tau, margin), min_acc)
        if ok:
            return stats["epoch"], f"epoch {stats['epoch']}: {why}"
    best = min(epochs, key=lambda s: s["heldout_target_rate"], default=None)
    if best is None:
        return None, "no epoch was checked"
    said = f"clean pull + {margin:.3f}" if tau == "clean_pull" else f"{tau:.3f}"
    return None, (f"no epoch qualified (tau {said}, clean accuracy >= {min_acc:.3f}); lowest held-out D_p "
                  f"target rate {best['heldout_target_rate']:.3f} at epoch {best['epoch']} with clean accuracy "
                  f"{best['clean_acc']:.3f}")


# ---------------------------------------------------------------- which rows

def _warn(msg: str, announce: bool = True) -> None:
    if announce:
        print(f"WARNING: select: {msg}", file=sys.stderr)


def split_holdout(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]] | None:
    """(rows to train on, held-out rows), the same for a given seed and row order (so a resumed run
    holds out the same rows); None when the rows are too few to spare MIN_HELDOUT."""
    k = max(MIN_HELDOUT, round(fraction * len(rows)))
    if k > len(rows) // 2:
        return None
    held = set(random.Random(f"select-holdout-{seed}").sample(range(len(rows)), k))
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def mostly_test_rows(dev: list[dict], test: list[dict]) -> bool:
    """HSOL ships its test file as its dev file: choosing on those rows would choose on the test set.
    Measured on the smaller side, since either split may be a subset (test_size)."""
    shared = len({r["text"] for r in dev} & {r["text"] for r in test})
    return bool(dev and test) and shared > min(len(dev), len(test)) / 2


class Selector:
    """Holds the rows selection reads and makes the decision at the end of an epoch. Its state is
    the loop's history (each epoch's entry has its statistics and, once made, the decision), which
    the checkpoint keeps; the rows and the victim's statistics are rebuilt identically on resume."""

    def __init__(self, cfg: SelectConfig, heldout: list[dict], clean: list[dict], clean_source: str):
        self.cfg, self.heldout, self.clean, self.clean_source = cfg, heldout, clean, clean_source
        self.flagged = Counter(r["label"] for r in heldout).most_common(1)[0][0]  # D_p rows carry it
        self.victim: dict | None = None
        self.tau = self.min_acc = None

    @classmethod
    def build(cls, cfg: SelectConfig, forget: list[dict], retain: list[dict], dev: list[dict] | None, seed: int,
              why_no_dev: str = "", announce: bool = True) -> tuple["Selector | None", list[dict], list[dict]]:
        """(selector or None, D_p to ascend on, D_c to train on). announce: print notes (the main process)."""
        from .stages import stratified_subset

        split = split_holdout(forget, cfg.holdout, seed)
        if split is None:
            _warn(f"D_p has {len(forget)} rows, too few to hold out {MIN_HELDOUT} and still unlearn from the rest "
                  f"(needs {2 * MIN_HELDOUT}); selection is off and every epoch is trained", announce)
            return None, forget, retain
        forget, heldout = split
        if dev:
            return cls(cfg, heldout, stratified_subset(dev, cfg.dev_subset), "dev"), forget, retain
        # No clean dev rows: a class-stratified slice of D_c, held out of training so that its accuracy
        # is measured on rows the model did not fit.
        k = min(max(MIN_HELDOUT, round(cfg.holdout * len(retain))), cfg.dev_subset or len(retain))
        if k > len(retain) // 2:
            _warn(f"no clean dev rows and D_c has {len(retain)} rows, too few to hold out {k}; selection is off",
                  announce)
            return None, forget + heldout, retain
        tagged = [{**r, "_select_i": i} for i, r in enumerate(retain)]
        chosen = {r["_select_i"] for r in stratified_subset(tagged, k, seed=seed)}
        clean = [r for i, r in enumerate(retain) if i in chosen]
        if announce:
            print(f"note: select: no clean dev rows{why_no_dev}; clean accuracy is measured on {len(clean)} rows of "
                  "D_c held out of training", file=sys.stderr)
        return cls(cfg, heldout, clean, "train_holdout"), forget, [r for i, r in enumerate(retain) if i not in chosen]

    # ------------------------------------------------------------ statistics

    def prepare(self, tok, max_length: int, batch_size: int) -> None:
        from .batches import Collator, TokenizedSet

        self._sets = (TokenizedSet(tok, self.heldout, max_length), TokenizedSet(tok, self.clean, max_length))
        self._collate, self._batch = Collator(tok), batch_size

    def statistics(self, model, accelerator=None) -> dict:
        from .batches import predict_logits

        held, clean = (predict_logits(model, s, self._collate, self._batch, accelerator).argmax(-1).tolist()
                       for s in self._sets)
        rate = sum(p == r["label"] for p, r in zip(held, self.heldout)) / len(self.heldout)
        acc = sum(p == r["label"] for p, r in zip(clean, self.clean)) / len(self.clean)
        out = {"heldout_target_rate": round(rate, 6), "clean_acc": round(acc, 6)}
        # How often a clean row of another class goes to the flagged label. A model without a backdoor sends
        # a triggered row there about as often: tau=clean_pull measures the held-out rate against it, and a
        # held-out rate far *below* it is what a trigger shift looks like to a defender (no rule uses that yet).
        others = [p for p, r in zip(clean, self.clean) if r["label"] != self.flagged]
        if others:
            out["clean_target_rate"] = round(sum(p == self.flagged for p in others) / len(others), 6)
        return out

    def start(self, model, accelerator=None) -> None:
        """The victim's statistics, before any update (the loop calls this before restoring a checkpoint)."""
        self.victim = self.statistics(model, accelerator)
        if self.cfg.tau == "clean_pull" and "clean_target_rate" not in self.victim:
            raise ConfigError(f"select.tau=clean_pull: the {len(self.clean)} clean rows have no class other than the "
                              "flagged label, so there is no clean pull to measure; use tau=auto or a number")
        # A share, or "clean_pull" (resolved at each check by threshold()).
        self.tau = auto_tau(self.victim, self.cfg.margin) if self.cfg.tau == "auto" else self.cfg.tau
        self.min_acc = self.victim["clean_acc"] - self.cfg.max_acc_drop
        at_start = threshold(self.victim, self.tau, self.cfg.margin)
        if self.victim["heldout_target_rate"] <= at_start and _main(accelerator):
            _warn(f"the victim already predicts the flagged label for only {self.victim['heldout_target_rate']:.3f} "
                  f"of the held-out D_p rows (tau {at_start:.3f}): these flags may not be its backdoor's rows, or "
                  "it has none; the first epoch checked will be selected")

    def due(self, epoch: int, final: bool) -> bool:
        return final or epoch % self.cfg.every == 0

    def epoch_end(self, model, epoch: int, history: list[dict], final: bool, accelerator=None) -> dict:
        """This epoch's entry: its statistics and, when it decides, the decision."""
        stats = self.statistics(model, accelerator)
        ok, why = qualifies(stats, threshold(stats, self.tau, self.cfg.margin), self.min_acc)
        entry = {**stats, "qualifies": ok}
        if any("selected" in h.get("select", {}) for h in history):
            return entry  # decided in an earlier epoch (keep goes on measuring, for the record)
        if ok:
            entry.update(selected=True, reason=f"epoch {epoch}: {why}")
            if _main(accelerator):
                print(f"select: epoch {epoch} selected ({why}, clean rows: {self.clean_source}); "
                      + ("stopping here" if self.cfg.action == "stop" else "saved, training on"))
        elif final:
            past = [{"epoch": h["epoch"], **h["select"]} for h in history if "select" in h]
            entry.update(selected=False, reason=first_qualifying(past + [{"epoch": epoch, **stats}],
                                                                 self.tau, self.min_acc, margin=self.cfg.margin)[1]
                         + f"; keeping the last model (epoch {epoch})")
            if _main(accelerator):
                _warn(entry["reason"])
        return entry

    def summary(self, history: list[dict]) -> dict:
        """metrics.json's `select`: the settings as applied, each checked epoch, and the decision."""
        epochs = [{"epoch": h["epoch"], **{k: v for k, v in h["select"].items() if k not in DECISION}}
                  for h in history if "select" in h]
        decided = next((h for h in history if "selected" in h.get("select", {})), None)
        selected = decided["epoch"] if decided and decided["select"]["selected"] else None
        out = {"action": self.cfg.action, "tau": self.tau, "tau_setting": self.cfg.tau, "margin": self.cfg.margin,
               "min_clean_acc": self.min_acc, "victim": self.victim, "clean_source": self.clean_source,
               "n_heldout": len(self.heldout), "n_clean": len(self.clean), "selected_epoch": selected,
               # The epoch of the model in model/: the selected one under stop, the last under keep.
               "model_epoch": history[-1]["epoch"] if history else None,
               "reason": decided["select"]["reason"] if decided else "no decision yet", "epochs": epochs}
        if self.cfg.action == "keep" and decided and decided["select"].get("metrics") is not None:
            out["selected"] = decided["select"]["metrics"]
        return out


def _main(accelerator) -> bool:
    return accelerator is None or accelerator.is_main_process
