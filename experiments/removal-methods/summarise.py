"""The README's per-attack tables, from `unbackdoor report`'s table.csv (so no number is copied by hand).

usage: python experiments/removal-methods/summarise.py experiments/removal-methods/report/table.csv
One table per attack: PACC − ReTrain, the target shift gap, the verdict, the relearned LFR at K = 16 / 64 and
its excess over ReTrain's, the control trigger variant (a rare word that never was a trigger; BadNets and
AddSent) and CPU ÷ ReTrain. With several seeds each cell is the mean, and the verdict the seeds' own.
"""

import csv
import sys

NAMES = {"victim": "Poisoned", "retrain": "ReTrain", "ga": "GA", "npo": "NPO", "rga": "RGA", "finetune": "Fine-tuning",
         "fineprune": "Fine-Pruning", "graddiff": "GradDiff", "simnpo": "SimNPO", "taskvector": "Task vector"}


def num(row: dict, key: str, fmt: str = "{:.1f}") -> str:
    v = row.get(key, "")
    return fmt.format(float(v)) if v not in ("", None) else "–"


def relearned(row: dict, k: int) -> str:
    excess = row.get(f"relearn_lfr_excess_{k}", "")
    return num(row, f"relearn_lfr_{k}", "{:.0f}") + (f" ({float(excess):+.0f})" if excess not in ("", None) else "")


def main(path: str) -> None:
    rows = list(csv.DictReader(open(path)))
    for attack in sorted({r["attack"] for r in rows}):
        sel = [r for r in rows if r["attack"] == attack]
        seeds = sorted({r["seeds"] for r in sel})
        print(f"\n**{attack}** ({'/'.join(seeds)} seed{'s' if seeds != ['1'] else ''})\n")
        print("| method | PACC − ReTrain | shift gap | verdict | LFR relearned K = 16 (− ReTrain's) | K = 64 | "
              "LFR, other rare word | CPU ÷ ReTrain |")
        print("|---|---|---|---|---|---|---|---|")
        for r in sel:
            verdict = r["verdict"] + (" ⚠ degenerate" if r.get("degenerate") else "")
            print(f"| {NAMES.get(r['method'], r['method'])} | {num(r, 'signed_delta_pacc', '{:+.1f}')} | "
                  f"{num(r, 'target_shift_gap', '{:+.1f}')} | {verdict} | {relearned(r, 16)} | {relearned(r, 64)} | "
                  f"{num(r, 'variant_lfr_other_word')} | {num(r, 'cpu_vs_retrain', '{:.2f}×')} |")


if __name__ == "__main__":
    main(sys.argv[1])
