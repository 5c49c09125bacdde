"""The selection-rule table: ΔPACC at the epoch unlearn.select chose (held-out D_p and clean dev only),
at the best evaluated epoch in hindsight (test set), and at the last epoch, for every run folder named
rga-select under RESULTS_DIR (unlearn ... -s select.action=keep). For every run folder named rga-stop (the
shipped select.action=stop), a second table gives what a user gets: the epoch it stopped at, its ΔPACC,
whether keep chose the same epoch, and its cost against ReTrain's (unbackdoor.reporting.training_cost: evaluations on the test set left
out, the selection's own checks of the epochs before the last kept in, since the defender pays for them).

usage: python selection.py RESULTS_DIR
"""

import json
import sys
from pathlib import Path

from unbackdoor.reporting import training_cost

rows, costs = [], []
for run in sorted(Path(sys.argv[1]).glob("*/*/seed*/rga-select")):
    cell = run.parent
    name = f"{cell.parent.name} s{cell.name[4:]}"
    retrain = json.loads((cell / "retrain" / "metrics.json").read_text())
    rt = retrain["metrics"]["test"]
    d = json.loads((run / "metrics.json").read_text())
    sel = d["select"]

    def fmt(m):
        return f"{abs(m['pacc'] - rt['pacc']):.1f} / {m['target_shift_gap']:+.1f}"

    full = [c for c in d["curve"] if "test" in c and c["test"]["n_triggered"] == rt["n_triggered"]]
    best = min(full, key=lambda c: abs(c["test"]["pacc"] - rt["pacc"]))
    # select.action=keep evaluates the selected model on every row when it saves it (select.selected).
    chosen = (sel.get("selected") or {}).get("test")
    chosen = chosen or next((c["test"] for c in full if c["epoch"] == sel.get("selected_epoch")), None)
    picked = f"{sel.get('selected_epoch')} ({fmt(chosen)})" if chosen else f"{sel.get('selected_epoch')} (n/a)"
    rows.append(f"| {name} | {picked} | {best['epoch']} ({fmt(best['test'])}) | "
                f"{full[-1]['epoch']} ({fmt(full[-1]['test'])}) | {sel['tau']:.3f} | {sel.get('reason', '')} |")


keep_epoch = {run.parent: json.loads((run / "metrics.json").read_text())["select"]["selected_epoch"]
              for run in Path(sys.argv[1]).glob("*/*/seed*/rga-select")}
for run in sorted(Path(sys.argv[1]).glob("*/*/seed*/rga-stop")):
    cell = run.parent
    retrain = json.loads((cell / "retrain" / "metrics.json").read_text())
    rt = retrain["metrics"]["test"]
    s = json.loads((run / "metrics.json").read_text())
    m = s["metrics"]["test"]
    (wall, cpu), (rwall, rcpu) = training_cost(s), training_cost(retrain)
    same = "–" if cell not in keep_epoch else "yes" if s["select"]["selected_epoch"] == keep_epoch[cell] else "**no**"
    costs.append(f"| {cell.parent.name} s{cell.name[4:]} | {s['select']['selected_epoch']} "
                 f"({abs(m['pacc'] - rt['pacc']):.1f} / {m['target_shift_gap']:+.1f}) | {same} | "
                 f"{wall:.0f} / {cpu:.0f} | {rwall:.0f} / {rcpu:.0f} | {wall / rwall:.2f}× / {cpu / rcpu:.2f}× |")

print("| cell | selected epoch (ΔPACC / gap) | best in hindsight (ΔPACC / gap) | last epoch (ΔPACC / gap) | τ | reason |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
if costs:
    print("\n| cell | stopped at epoch (ΔPACC / gap) | same epoch as keep | RGA wall / CPU s | ReTrain wall / CPU s | RGA ÷ ReTrain, wall / CPU |")
    print("|---|---|---|---|---|---|")
    print("\n".join(costs))
