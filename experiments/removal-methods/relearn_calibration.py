"""Choose the relearning probe's setting (issue 18) on one finished cell of the grid.

    python experiments/removal-methods/relearn_calibration.py /root/removal/sst2/badnets/seed42 \
        retrain victim rga ga finetune --mix balanced --lr 1e-4 5e-5 2e-5 --out relearn-calibration.csv

For every model, mix and lr, and K = 16 and 64: relearn a copy (probes.relearn, 20 steps, probe seed 0) and
measure LFR and CACC on the cell's test split. A useful setting leaves ReTrain's relearned LFR well below 100
(else every model comes back to 100 and the excess over ReTrain says nothing) and CACC near the model's own.
Rows are appended to --out, so the command can be rerun for more models or settings.
"""

import argparse
import csv
import time
from pathlib import Path

from unbackdoor.evaluation import evaluate
from unbackdoor.models import load_classifier
from unbackdoor.poisoned_set import load_poisoned_set
from unbackdoor.probes import ProbeConfig, relearn, relearn_sets

FIELDS = ["model", "mix", "lr", "k", "lfr", "cacc", "seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell")
    ap.add_argument("models", nargs="+", help="stage folders of the cell: retrain victim rga ...")
    ap.add_argument("--mix", nargs="+", default=["balanced"], choices=["balanced", "poisoned"])
    ap.add_argument("--lr", nargs="+", type=float, default=[2e-5])
    ap.add_argument("--k", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cell = Path(args.cell)
    ps = load_poisoned_set(cell / "poisoned")
    out = Path(args.out)
    new = not out.is_file()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        for name in args.models:
            model, tok, _ = load_classifier(str(cell / name / "model"))
            model.eval()
            for mix in args.mix:
                sets = relearn_sets(ps, args.k, mix, seed=0)
                for lr in args.lr:
                    for k in args.k:
                        t = time.time()
                        twin = relearn(model, tok, sets[k], ProbeConfig(relearn=[k], relearn_mix=mix), lr,
                                       args.max_length)
                        m = evaluate(twin, tok, ps.test_clean, ps.test_triggered, ps.target, ps.label_names,
                                     args.max_length, 128)
                        row = {"model": name, "mix": mix, "lr": lr, "k": k, "lfr": m["lfr"], "cacc": m["cacc"],
                               "seconds": round(time.time() - t)}
                        print(row, flush=True)
                        w.writerow(row)
                        f.flush()


if __name__ == "__main__":
    main()
