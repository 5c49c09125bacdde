"""How far ReTrain itself moves, on the cells where the target is read. ΔPACC is measured against one ReTrain:
one training seed, 3 epochs. This puts other ReTrains beside it, on the same D_c and the same test rows:
- other training seeds at the protocol's 3 epochs: how much two clean models differ (ΔPACC's floor);
- 10 epochs: a clean model trained about as long as RGA's model has seen D_c. RGA starts from a victim that
  was trained on all rows. Then each of its 30 epochs adds 1,655 D_c rows, so by epoch 30 it has seen D_c
  about 9 more times. On HiddenKiller and StyleBkd its CACC ends 1 to 3 points above ReTrain's.

usage: python experiments/rga-drift/retrain_spread.py experiments/rga-drift/retrain-spread experiments/rga-drift/full-runs 2022
SPREAD: <attack>/e<epochs>-s<seed>/metrics.json, each from `unbackdoor train --clean-only` (README);
FULL_RUNS: the grid's small files (sst2/<attack>/seed<SEED>/{retrain,rga}/metrics.json).
"""
import json
import re
import sys
from pathlib import Path


def test_metrics(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]["test"]


def main(spread: Path, full: Path, seed: int) -> None:
    print(f"ReTrain beside the grid's ReTrain (3 epochs, seed {seed}) and the default RGA at epoch 30; "
          "CACC / PACC, and PACC − the grid ReTrain's.\n")
    print("| attack | grid ReTrain | other training seeds, 3 epochs | ReTrain, 10 epochs | RGA, epoch 30 | "
          "RGA ΔPACC against the grid ReTrain / the 10-epoch one |")
    print("|---|---|---|---|---|---|")
    for attack_dir in sorted(p for p in spread.iterdir() if p.is_dir()):
        cell = full / "sst2" / attack_dir.name / f"seed{seed}"
        grid, rga = test_metrics(cell / "retrain" / "metrics.json"), test_metrics(cell / "rga" / "metrics.json")
        runs = {}
        for f in attack_dir.glob("e*-s*/metrics.json"):
            e, s = map(int, re.fullmatch(r"e(\d+)-s(\d+)", f.parent.name).groups())
            runs[(e, s)] = test_metrics(f)

        def cp(m):  # CACC / PACC (PACC - the grid ReTrain's)
            return f"{m['cacc']:.1f} / {m['pacc']:.1f} ({m['pacc'] - grid['pacc']:+.1f})"
        others = "; ".join(f"s{s}: {cp(m)}" for (e, s), m in sorted(runs.items()) if e == 3 and s != seed)
        long = runs.get((10, seed))
        d_long = f"{abs(rga['pacc'] - long['pacc']):.2f}" if long else "-"
        print(f"| {attack_dir.name} | {grid['cacc']:.1f} / {grid['pacc']:.1f} | {others or 'not run'} | "
              f"{cp(long) if long else 'not run'} | {cp(rga)} | {abs(rga['pacc'] - grid['pacc']):.2f} / {d_long} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
