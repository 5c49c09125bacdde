"""The selection-rule table: ΔPACC at the epoch unlearn.select chose (held-out D_p and clean dev only),
at the best evaluated epoch in hindsight (test set), and at the last epoch, for every run under
RESULTS_DIR/<dataset>/<attack>/seed<N>/ made with select.action=keep, with its cost to the selected epoch.
For every run made with select.action=stop (the shipped default), a second table gives what a user gets:
the epoch it stopped at, its ΔPACC, whether keep chose the same epoch, and its cost.
Cost is unbackdoor.reporting.training_cost against the cell's ReTrain: evaluations on the test set left
out, the selection's own checks kept in, since the defender pays for them. A keep run's cost to the
selected epoch is its clocks at that epoch, which a stop run at the same epoch would have spent.

usage: python selection.py RESULTS_DIR
"""

import json
import sys
from pathlib import Path

from unbackdoor.reporting import training_cost


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def fmt(m: dict, rt: dict) -> str:
    """ΔPACC / shift gap of test metrics m against ReTrain's rt."""
    return f"{abs(m['pacc'] - rt['pacc']):.1f} / {m['target_shift_gap']:+.1f}"


def name(cell: Path) -> str:
    return f"{cell.parent.name} s{cell.name[4:]}"


def ratio(cost: tuple, ref: tuple) -> str:
    (wall, cpu), (rwall, rcpu) = cost, ref
    return f"{wall:.0f} / {cpu:.0f} | {rwall:.0f} / {rcpu:.0f} | {wall / rwall:.2f}× / {cpu / rcpu:.2f}×"


runs = {"keep": [], "stop": []}
for path in sorted(Path(sys.argv[1]).glob("*/*/seed*/*/metrics.json")):
    d = load(path)
    action = (d.get("select") or {}).get("action")
    if action in runs:
        runs[action].append((path.parent, d))

rows, costs, keep_epoch, retrain_test = [], [], {}, {}
for run, d in runs["keep"]:
    cell = run.parent
    retrain = load(cell / "retrain" / "metrics.json")
    rt = retrain_test[run] = retrain["metrics"]["test"]
    sel = d["select"]
    keep_epoch[cell] = sel["selected_epoch"]
    full = [c for c in d["curve"] if "test" in c and c["test"]["n_triggered"] == rt["n_triggered"]]
    best = min(full, key=lambda c: abs(c["test"]["pacc"] - rt["pacc"]))
    # select.action=keep evaluates the selected model on every row when it saves it (select.selected).
    chosen = (sel.get("selected") or {}).get("test")
    chosen = chosen or next((c["test"] for c in full if c["epoch"] == sel.get("selected_epoch")), None)
    picked = f"{sel.get('selected_epoch')} ({fmt(chosen, rt)})" if chosen else f"{sel.get('selected_epoch')} (n/a)"
    to_selected = [h for h in d["history"] if h["epoch"] <= (sel.get("selected_epoch") or 0)]
    cost = ratio(training_cost({"history": to_selected}), training_cost(retrain)) if to_selected else "– | – | –"
    rows.append(f"| {name(cell)} {run.name} | {picked} | {best['epoch']} ({fmt(best['test'], rt)}) | "
                f"{full[-1]['epoch']} ({fmt(full[-1]['test'], rt)}) | {sel['tau'] if isinstance(sel['tau'], str) else format(sel['tau'], '.3f')} | {sel.get('reason', '')} "
                f"| {cost} |")

for run, s in runs["stop"]:
    cell = run.parent
    retrain = load(cell / "retrain" / "metrics.json")
    epoch = s["select"]["selected_epoch"]
    same = "–" if cell not in keep_epoch else "yes" if epoch == keep_epoch[cell] else "**no**"
    costs.append(f"| {name(cell)} | {epoch} ({fmt(s['metrics']['test'], retrain['metrics']['test'])}) | {same} | "
                 f"{ratio(training_cost(s), training_cost(retrain))} |")

print("| cell | selected epoch (ΔPACC / gap) | best in hindsight (ΔPACC / gap) | last epoch (ΔPACC / gap) | τ | reason "
      "| to selected: wall / CPU s | ReTrain wall / CPU s | ÷ ReTrain, wall / CPU |")
print("|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
if costs:
    print("\n| cell | stopped at epoch (ΔPACC / gap) | same epoch as keep | RGA wall / CPU s | ReTrain wall / CPU s | RGA ÷ ReTrain, wall / CPU |")
    print("|---|---|---|---|---|---|")
    print("\n".join(costs))

# What a defender sees of a shift: a model that no longer reads the trigger as the target, but as a cue against
# it, sends held-out D_p rows to the target *less* often than clean rows of their own class (clean_target_rate,
# the model's own pull to the target). Per keep run that recorded it, at each epoch also scored on the test set:
# held-out rate − clean pull (points) and the shift gap's excess over ReTrain's.
signal = []
for run, d in runs["keep"]:
    checks = {c["epoch"]: c for c in d["select"]["epochs"] if "clean_target_rate" in c}
    if not checks:
        continue
    rt = retrain_test[run]
    pts = [f"{c['epoch']}: {100 * (checks[c['epoch']]['heldout_target_rate'] - checks[c['epoch']]['clean_target_rate']):+.0f}"
           f" / {c['test']['target_shift_gap'] - rt['target_shift_gap']:+.0f}"
           for c in d["curve"] if c["epoch"] in checks and "test" in c and c["test"]["n_triggered"] == rt["n_triggered"]]
    signal.append(f"| {name(run.parent)} {run.name} | {d['select']['n_heldout']} | " + ", ".join(pts) + " |")
if signal:
    print("\n| run | held-out rows | epoch: held-out rate − clean pull / shift gap − ReTrain's (points) |")
    print("|---|---|---|")
    print("\n".join(signal))
