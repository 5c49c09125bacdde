"""Replay selection rules on the statistics keep runs recorded (select.epochs), without training.

Each rule sees only the held-out D_p target rate and clean accuracy at the checks, as the package's rule
does; the test set only scores the epoch it picks. Checks are restricted to the epochs the run evaluated
on the test set (every 2 at demo scale, every 5 at full data), as if select.every were that interval, so
that every pick has a test score. Choosing a rule by this table would tune it on the test set: it says
which ideas are worth a fresh seed, not which rule is right.

A second table gives the package's two rules (tau auto and clean_pull) as a run applies them, at every epoch.

Rules:
  first      the package's rule (selection.first_qualifying): the first check with rate <= tau and clean accuracy >= the floor
  confirm2   the second of two consecutive qualifying checks (one noisy check cannot decide)
  corrected  select.tau=clean_pull: the first check whose held-out rate exceeds the model's own clean pull to the
             target (clean_target_rate, recorded since revision cd600b7) by at most the run's select.margin
             (recorded with its statistics), with clean accuracy >= the floor: the rate against the model's lean,
             not the victim's error

usage: python replay.py RESULTS_DIR [RESULTS_DIR ...]
"""

import json
import sys
from pathlib import Path

from unbackdoor.selection import auto_tau, first_qualifying, qualifies, threshold


def first(checks, tau, floor, margin):
    return first_qualifying(checks, tau, floor, margin=margin)[0]  # the package's rule itself, not a copy of it


def confirm2(checks, tau, floor, margin):
    ok = [qualifies(c, threshold(c, tau, margin), floor)[0] for c in checks]
    return next((checks[i]["epoch"] for i in range(1, len(checks)) if ok[i] and ok[i - 1]), None)


def corrected(checks, tau, floor, margin):
    if not all("clean_target_rate" in c for c in checks):
        return "n/a"
    return first_qualifying(checks, "clean_pull", floor, margin=margin)[0]  # the package's select.tau=clean_pull


RULES = {"first": first, "confirm2": confirm2, "corrected": corrected}


def score(test: dict, rt: dict) -> str:
    return f"{abs(test['pacc'] - rt['pacc']):.1f} / {test['target_shift_gap']:+.1f}"


def runs(roots):
    """(results folder, the stage's metrics.json path, its metrics, its test metrics by evaluated epoch, ReTrain's
    test metrics) of every keep run. Epochs evaluated on another triggered set size are left out."""
    for root in roots:
        for path in sorted(Path(root).glob("*/*/seed*/*/metrics.json")):
            d = json.loads(path.read_text())
            if (d.get("select") or {}).get("action") != "keep":
                continue
            rt = json.loads((path.parent.parent / "retrain" / "metrics.json").read_text())["metrics"]["test"]
            tests = {c["epoch"]: c["test"] for c in d["curve"]
                     if "test" in c and c["test"]["n_triggered"] == rt["n_triggered"]}
            yield root, path, d, tests, rt


def shipped_tau(sel: dict) -> float:
    # A run made with tau=clean_pull recorded no fixed tau: the shipped rule's, from its recorded victim.
    return sel["tau"] if not isinstance(sel["tau"], str) else auto_tau(sel["victim"], sel["margin"])


def label(root, path) -> str:
    cell = path.parent.parent
    return f"{cell.parent.name} s{cell.name[4:]} | {path.parent.name} ({Path(root).name})"


def every_epoch(roots) -> None:
    """The two package rules as a run checks them (every epoch), not restricted to evaluated epochs. A pick is
    scored where the run has a test score for it: its saved selected model (whichever rule saved that epoch) or an
    evaluated epoch; otherwise it is named only."""
    print("\n| cell | run | ran with | auto: epoch (ΔPACC / gap) | clean_pull: epoch (ΔPACC / gap) | epoch 30 |")
    print("|---|---|---|---|---|---|")
    for root, path, d, tests, rt in runs(roots):
        sel = d["select"]
        if not all("clean_target_rate" in c for c in sel["epochs"]):
            continue
        cols = []
        for tau in (shipped_tau(sel), "clean_pull"):
            e = first_qualifying(sel["epochs"], tau, sel["min_clean_acc"], margin=sel["margin"])[0]
            if e is None:
                cols.append("none")
            elif e == sel.get("selected_epoch") and sel.get("selected"):  # that epoch's model, whichever rule saved it
                cols.append(f"{e} ({score(sel['selected']['test'], rt)}, saved)")
            elif e in tests:
                cols.append(f"{e} ({score(tests[e], rt)})")
            else:
                cols.append(f"{e} (not evaluated)")
        last = max(tests)
        print(f"| {label(root, path)} | {sel.get('tau_setting', 'fixed')} | " + " | ".join(cols)
              + f" | {last} ({score(tests[last], rt)}) |")

print("| cell | run | every | held out | " + " | ".join(f"{r}: epoch (ΔPACC / gap)" for r in RULES)
      + " | last epoch | best in hindsight |")
print("|---|---|---|---|" + "---|" * (len(RULES) + 2))
for root, path, d, tests, rt in runs(sys.argv[1:]):
    sel = d["select"]
    checks = [e for e in sel["epochs"] if e["epoch"] in tests]
    every = checks[1]["epoch"] - checks[0]["epoch"] if len(checks) > 1 else 1
    picks = []
    for rule in RULES.values():
        e = rule(checks, shipped_tau(sel), sel["min_clean_acc"], sel["margin"])
        picks.append("n/a" if e == "n/a" else f"{e} ({score(tests[e], rt)})" if e is not None else "none: last kept")
    last = max(tests)
    best = min(tests, key=lambda e: abs(tests[e]["pacc"] - rt["pacc"]))
    print(f"| {label(root, path)} | {every} | {sel['n_heldout']} | " + " | ".join(picks)
          + f" | {last} ({score(tests[last], rt)}) | {best} ({score(tests[best], rt)}) |")
every_epoch(sys.argv[1:])
