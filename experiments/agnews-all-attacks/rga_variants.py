"""AG News: RGA at the package's settings and its variants (α 1, α 0.5, with `unlearn.select`), per attack and seed,
epoch by epoch (test LFR / PACC at each evaluation, the epoch's mean λ) and at the end (ΔPACC, shift gap and the
verdict against ReTrain of the same seed), from the kept small files: runs/ and runs-full/ (the cpu-agnews grid:
victim, ReTrain, RGA), runs-alpha1/ (rga-alpha1.yaml) and runs-hk-variants/ (hk-rga-variants.yaml).
Writes rga-variants.md here.

    python experiments/agnews-all-attacks/rga_variants.py
"""

import json
from pathlib import Path

from unbackdoor.artifacts import read_jsonl
from unbackdoor.reporting import per_epoch
from unbackdoor.verdict import decide

HERE = Path(__file__).parent
FOLDERS = ["runs", "runs-full", "runs-alpha1", "runs-hk-variants"]
METHODS = ["rga", "rga-a1", "rga-a05", "rga-select"]
ATTACKS = ["badnets", "addsent", "hiddenkiller", "stylebkd"]


def stage(attack, seed, method):
    for folder in FOLDERS:
        path = HERE / folder / "agnews" / attack / f"seed{seed}" / method
        if (path / "metrics.json").is_file():
            return path
    return None


def lambdas(path):
    return dict(zip(*per_epoch(read_jsonl(path / "loss_log.jsonl"), "lambda")))


def seeds_of(attack):
    return sorted({int(p.name[4:]) for f in FOLDERS for p in (HERE / f / "agnews" / attack).glob("seed*")})


def main():
    lines = ["| attack | seed | method | α | select | test LFR / PACC at each evaluation | final ΔPACC (ReTrain PACC) | "
             "shift gap (ReTrain's) | verdict | stopped at | mean λ, epochs 1 / 2 / 4 / 8 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for attack in ATTACKS:
        for seed in seeds_of(attack):
            ref_path = stage(attack, seed, "retrain")
            if ref_path is None:
                continue
            ref_m = json.loads((ref_path / "metrics.json").read_text())
            ref = ref_m["metrics"]["test"]
            meta = ref_m["poison_meta"]
            for method in METHODS:
                path = stage(attack, seed, method)
                if path is None:
                    continue
                m = json.loads((path / "metrics.json").read_text())
                cfg, final = m["config"], m["metrics"]["test"]
                curve = " → ".join(f"{c['test']['lfr']:.1f} / {c['test']['pacc']:.1f}" for c in m["curve"]
                                   if "test" in c)
                lam = lambdas(path)
                lam_s = " / ".join(f"{lam[e]:.1e}" if e in lam else "–" for e in (1, 2, 4, 8))
                verdict = decide(final, ref, meta.get("target", 0), meta.get("label_names")).label
                stop = (m.get("select") or {}).get("selected_epoch")
                lines.append(
                    f"| {attack} | {seed} | {method} | {cfg['rga']['alpha']:g} | {cfg['select']['action']} | {curve} | "
                    f"{abs(final['pacc'] - ref['pacc']):.1f} ({ref['pacc']:.1f}) | "
                    f"{final['target_shift_gap']:+.1f} ({ref['target_shift_gap']:+.1f}) | {verdict} | "
                    f"{stop if stop is not None else '–'} | {lam_s} |")
    (HERE / "rga-variants.md").write_text(
        "# AG News: RGA and its variants, per attack and seed\n\nWritten by `rga_variants.py` from "
        + ", ".join(f"{f}/" for f in FOLDERS) + ". LFR pooled over the non-target triggered rows; ΔPACC = |PACC − "
        "ReTrain's PACC| of the same seed; the verdict is `unbackdoor.verdict.decide` against that ReTrain, as in "
        "`unbackdoor report`. HiddenKiller runs at the authors' size (8,000 + 600, 10% add), the others at 1,200 "
        "rows.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
