"""The selection-rule table: ΔPACC at the epoch unlearn.select chose (held-out D_p and clean dev only),
at the best evaluated epoch in hindsight (test set), and at the last epoch, for every run folder named
rga-select under RESULTS_DIR (unlearn ... -s select.action=keep).

usage: python selection.py RESULTS_DIR
"""

import json
import sys
from pathlib import Path

print("| cell | selected epoch (ΔPACC / gap) | best in hindsight (ΔPACC / gap) | last epoch (ΔPACC / gap) | τ | reason |")
print("|---|---|---|---|---|---|")
for run in sorted(Path(sys.argv[1]).glob("*/*/seed*/rga-select")):
    cell = run.parent
    rt = json.loads((cell / "retrain" / "metrics.json").read_text())["metrics"]["test"]
    d = json.loads((run / "metrics.json").read_text())
    sel = d["select"]

    def fmt(m):
        return f"{abs(m['pacc'] - rt['pacc']):.1f} / {m['target_shift_gap']:+.1f}"

    full = [c for c in d["curve"] if "test" in c and c["test"]["n_triggered"] == rt["n_triggered"]]
    best = min(full, key=lambda c: abs(c["test"]["pacc"] - rt["pacc"]))
    chosen = sel.get("metrics", {}).get("test") if isinstance(sel.get("metrics"), dict) else None
    chosen = chosen or next((c["test"] for c in full if c["epoch"] == sel.get("selected_epoch")), None)
    picked = f"{sel.get('selected_epoch')} ({fmt(chosen)})" if chosen else f"{sel.get('selected_epoch')} (n/a)"
    print(f"| {cell.parent.name} s{cell.name[4:]} | {picked} | {best['epoch']} ({fmt(best['test'])}) | "
          f"{full[-1]['epoch']} ({fmt(full[-1]['test'])}) | {sel.get('tau', '')} | {sel.get('reason', '')} |")
