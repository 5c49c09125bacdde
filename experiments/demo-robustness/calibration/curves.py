"""The dev calibration's runs as one CSV: final dev metrics and the per-epoch curve of each method.

usage: python curves.py RUNS_6_EPOCHS RUNS_8_EPOCHS > calibration.csv
(the output_dir of dev-6epochs.yaml and of dev-8epochs.yaml)
"""

import csv
import json
import sys
from pathlib import Path

w = csv.writer(sys.stdout)
w.writerow(["epochs", "seed", "method", "cacc", "lfr", "pacc", "pacc_minus_retrain", "shift_gap",
            "curve_pacc_minus_retrain_by_epoch", "curve_shift_gap_by_epoch"])
for epochs, root in zip((6, 8), map(Path, sys.argv[1:3])):
    for cell in sorted(root.glob("sst2/badnets/seed*")):
        rt = json.loads((cell / "retrain" / "metrics.json").read_text())["metrics"]["dev"]
        for run in sorted(p for p in cell.iterdir() if (p / "metrics.json").is_file() and p.name != "victim"):
            d = json.loads((run / "metrics.json").read_text())
            m = d["metrics"]["dev"]
            # Epochs before the last are on a fixed 200-row dev subset, the last on all 872 rows.
            curve = [c for c in d.get("curve", []) if "dev" in c]
            w.writerow([epochs, cell.name[4:], run.name, f"{m['cacc']:.1f}", f"{m['lfr']:.1f}", f"{m['pacc']:.1f}",
                        f"{m['pacc'] - rt['pacc']:+.1f}", f"{m['target_shift_gap']:+.1f}",
                        " ".join(f"{c['dev']['pacc'] - rt['pacc']:+.0f}" for c in curve),
                        " ".join(f"{c['dev']['target_shift_gap']:+.0f}" for c in curve)])
