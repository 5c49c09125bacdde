"""Collect the demo-robustness runs into results.csv, walltimes.csv and the criteria check.

usage: python collect.py ROOT OUT_DIR   (ROOT holds seed<S>-threads<T>/ run folders and their .time files)
"""

import csv
import re
import sys
from pathlib import Path

from unbackdoor.reporting import summarise
from unbackdoor.grid import load_results

# The margins: GA clearly shifts, RGA stays.
GA_MIN_GAP, GA_MIN_PACC_DROP = 40.0, 15.0
RGA_MAX_GAP, RGA_MAX_DPACC = 10.0, 3.0


def wall_seconds(time_file: Path) -> float | None:
    if not time_file.is_file():
        return None
    m = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", time_file.read_text())
    if m is None:
        return None
    h, mnt, s = m.groups()
    return int(h or 0) * 3600 + int(mnt) * 60 + float(s)


EXTRA = ("rga-joint",)  # variants run into the demo's cells afterwards (not part of the demo): extra.csv


def row(seed: int, threads: int, method: str, r: dict) -> dict:
    return {"seed": seed, "threads": threads, "method": method, "cacc": r["cacc"], "lfr": r["lfr"],
            "pacc": r["pacc"], "delta_pacc": r["delta_pacc"], "signed_delta_pacc": r["signed_delta_pacc"],
            "shift_gap": r["target_shift_gap"], "verdict": r["verdict"]}


def main(root: Path, out: Path) -> int:
    rows, walls, failures, extra = [], [], [], []
    for run in sorted(root.glob("seed*-threads*")):
        if not (run / "report" / "report.md").is_file():  # unfinished
            continue
        seed, threads = map(int, re.match(r"seed(\d+)-threads(\d+)", run.name).groups())
        walls.append({"seed": seed, "threads": threads, "wall_s": wall_seconds(run.with_suffix(".time"))})
        by = {r["method"]: r for r in summarise(load_results(run))}
        rows += [row(seed, threads, method, by[method]) for method in ("retrain", "ga", "rga")]
        extra += [row(seed, threads, method, by[method]) for method in EXTRA if method in by]
        ga, rga = by["ga"], by["rga"]
        checks = [("GA shift gap", ga["target_shift_gap"], ">=", GA_MIN_GAP),
                  ("GA PACC below ReTrain", -ga["signed_delta_pacc"], ">=", GA_MIN_PACC_DROP),
                  ("RGA |shift gap|", abs(rga["target_shift_gap"]), "<=", RGA_MAX_GAP),
                  ("RGA dPACC", rga["delta_pacc"], "<=", RGA_MAX_DPACC)]
        for name, value, op, bound in checks:
            if not (value >= bound if op == ">=" else value <= bound):
                failures.append(f"{run.name}: {name} {value:.1f}, needs {op} {bound:g}")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("results.csv", rows), ("walltimes.csv", walls), ("extra.csv", extra)):
        if not data:
            continue
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            for d in data:
                w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in d.items()})
    lines = ["| seed | threads | method | CACC | LFR | PACC | ΔPACC | PACC − ReTrain | shift gap | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['threads']} | {r['method']} | {r['cacc']:.1f} | {r['lfr']:.1f} | "
                     f"{r['pacc']:.1f} | {r['delta_pacc']:.1f} | {r['signed_delta_pacc']:+.1f} | "
                     f"{r['shift_gap']:+.1f} | {r['verdict']} |")
    lines += ["", "| seed | threads | wall (s) |", "|---|---|---|"]
    lines += [f"| {w['seed']} | {w['threads']} | {w['wall_s']:.0f} |" for w in walls if w["wall_s"]]
    lines += ["", "Criteria not met:" if failures else "Every criterion holds in every run.", *[f"- {f}" for f in failures]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    runs = len(walls)
    print(f"{runs} runs; criteria (GA gap >= {GA_MIN_GAP:g} and PACC >= {GA_MIN_PACC_DROP:g} below ReTrain; "
          f"RGA |gap| <= {RGA_MAX_GAP:g} and dPACC <= {RGA_MAX_DPACC:g}): "
          + ("all hold" if not failures else f"{len(failures)} failures:\n  " + "\n  ".join(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
