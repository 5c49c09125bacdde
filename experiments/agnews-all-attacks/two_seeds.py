"""Seeds 42 and 43 of the AG News block side by side, and their mean, from the two committed reports.

Seed 42's run folder was lost with the machine that ran it; its report (report/table.csv, one seed) was
committed. Seed 43's small files are kept in runs/ and its report is report-seed43/. Each seed's ΔPACC and
verdict are against ReTrain of the same seed, as `unbackdoor report` computes them over seeds, so the mean
here is the mean `unbackdoor report` would print over both run folders.

    python experiments/agnews-all-attacks/two_seeds.py   # writes two-seeds.md and two-seeds.csv here
"""

import csv
import statistics
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = {42: HERE / "report" / "table.csv", 43: HERE / "report-seed43" / "table.csv"}
KEYS = ["cacc", "lfr", "pacc", "delta_pacc", "target_shift_gap"]


def main():
    per_seed = {}
    for seed, path in SOURCES.items():
        for r in csv.DictReader(path.open()):
            if r["seeds"] != "1":
                raise SystemExit(f"{path}: {r['attack']}/{r['method']} averages {r['seeds']} seeds; one expected")
            per_seed.setdefault((r["attack"], r["method"], r["poisoning"]), {})[seed] = r
    rows = []
    for (attack, method, poisoning), by in per_seed.items():
        if set(by) != set(SOURCES):
            raise SystemExit(f"{attack}/{method}: only seeds {sorted(by)}")
        row = {"attack": attack, "method": method, "poisoning": poisoning}
        for k in KEYS:
            vals = [float(by[s][k]) for s in SOURCES if by[s][k] != ""]
            row[k] = statistics.fmean(vals) if len(vals) == len(SOURCES) else None
            row[k + "_by_seed"] = " / ".join(f"{v:.1f}" for v in vals)
        verdicts = [by[s]["verdict"] for s in SOURCES]
        row["verdict"] = verdicts[0] if len(set(verdicts)) == 1 else " / ".join(verdicts)
        rows.append(row)
    with (HERE / "two-seeds.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = "| attack | method | " + " | ".join(f"{k} (42 / 43 → mean)" for k in KEYS) + " | verdict (42 / 43) |"
    lines = [head, "|" + "---|" * (3 + len(KEYS))]
    for r in rows:
        cells = [f"{r[k + '_by_seed']} → {r[k]:.1f}" if r[k] is not None else r[k + "_by_seed"] or "–" for k in KEYS]
        attack = r["attack"] + (f" ({r['poisoning']})" if r["poisoning"] != "replace 50%" else "")
        lines.append(f"| {attack} | {r['method']} | " + " | ".join(cells) + f" | {r['verdict']} |")
    (HERE / "two-seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
