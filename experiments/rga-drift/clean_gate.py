"""A trial of one idea against the rewriting-trigger overshoot: ascend only the flagged rows that a briefly
trained clean model does not itself read as the flagged label.

RGA ascends every flagged row until the row no longer reads as the target. On HiddenKiller and StyleBkd a
model never poisoned reads 39-57% of the rewritten rows as the target from the rewrite alone (dp_rates.py).
Those rows carry no evidence of a backdoor, but the ascent still pushes them. After them the style itself
starts to read as a cue against the target, and RGA's PACC ends above ReTrain's. A clean proxy, one epoch of
ReTrain (about a third of ReTrain's cost), marks those rows. This script writes a copy of the poisoned set
without them. They are dropped from training altogether: their label is the attacker's, so they are not
descended either. The test and dev splits are unchanged, so the results compare with the grid's ReTrain.

usage: python experiments/rga-drift/clean_gate.py CELL PROXY OUT [MAX_LENGTH]
       python experiments/rga-drift/clean_gate.py --table GATE_RUNS FULL_RUNS SEED
CELL: <out>/<dataset>/<attack>/seed<S> (poisoned/); PROXY: a `unbackdoor train --clean-only` folder.
--table: GATE_RUNS/<attack>/{proxy,rga}/metrics.json and poisoned/meta.json, beside the grid's ReTrain and
default RGA of the same cell in FULL_RUNS (experiments/rga-drift/full-runs).
"""
import json
import sys
from pathlib import Path

from dp_rates import finetuned

from unbackdoor.poisoned_set import PoisonedSet, load_poisoned_set, save_poisoned_set


def main(cell: Path, proxy: Path, out: Path, max_length: int) -> None:
    ps = load_poisoned_set(cell / "poisoned")
    flagged = ps.poisoned
    predict = finetuned(proxy, ps, max_length)
    reads_flagged = {r["uid"] for r, p in zip(flagged, predict(flagged)) if p == r["label"]}
    train = [r for r in ps.train if r["uid"] not in reads_flagged]
    gate = {"proxy": str(proxy), "flagged": len(flagged), "dropped": len(reads_flagged),
            "why": "flagged rows the clean proxy predicts as their flagged label, dropped from training"}
    save_poisoned_set(PoisonedSet(ps.label_names, ps.target, train, ps.test_clean, ps.test_triggered, ps.dev_clean,
                                  ps.dev_triggered, ps.meta), out, {"clean_gate": gate})
    print(f"{cell.name} {cell.parent.name}: the proxy reads {len(reads_flagged)} of {len(flagged)} flagged rows "
          f"({100 * len(reads_flagged) / len(flagged):.1f}%) as the flagged label; {out} keeps "
          f"{len(flagged) - len(reads_flagged)} flagged and {len(ps.clean)} clean rows")


def table(gate_runs: Path, full: Path, seed: int) -> None:
    def load(p: Path) -> dict:
        return json.loads(p.read_text())

    print("PACC − the grid ReTrain's (ΔPACC is its size) / shift gap, same cell; the default RGA ran on all flagged "
          "rows, the gated one on those the proxy does not read as the flagged label.\n")
    print("| attack | proxy reads as flagged | ReTrain: PACC / gap | default RGA, epoch 30 | gated RGA, epoch 30 "
          "(CACC, LFR) | gated, epochs 5 / 10 / 15 / 20 / 25 | gated, selected epoch |")
    print("|---|---|---|---|---|---|---|")
    for d in sorted(p for p in gate_runs.iterdir() if (p / "rga" / "metrics.json").is_file()):
        cell = full / "sst2" / d.name / f"seed{seed}"
        rt = load(cell / "retrain" / "metrics.json")["metrics"]["test"]
        default = load(cell / "rga" / "metrics.json")["metrics"]["test"]
        gated = load(d / "rga" / "metrics.json")
        gate = load(d / "poisoned" / "meta.json")["clean_gate"]

        def dg(m):
            return f"{m['pacc'] - rt['pacc']:+.2f} / {m['target_shift_gap']:+.1f}"
        last = gated["metrics"]["test"]
        curve = " / ".join(f"{c['test']['pacc'] - rt['pacc']:+.1f}" for c in gated["curve"] if c["epoch"] < 30)
        sel = gated["select"]
        chosen = "none qualified"
        if sel.get("selected_epoch") is not None:
            m = sel["selected"]["test"]
            chosen = f"{sel['selected_epoch']}: {dg(m)} (LFR {m['lfr']:.1f})"
        print(f"| {d.name} | {gate['dropped']} of {gate['flagged']} ({100 * gate['dropped'] / gate['flagged']:.1f}%) | "
              f"{rt['pacc']:.1f} / {rt['target_shift_gap']:+.1f} | {dg(default)} | {dg(last)} ({last['cacc']:.1f}, "
              f"{last['lfr']:.1f}) | {curve} | {chosen} |")


if __name__ == "__main__" and sys.argv[1:2] == ["--table"]:
    table(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
elif __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 128)
