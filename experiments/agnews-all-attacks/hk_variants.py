"""AG News HiddenKiller at the authors' size: RGA and its variants epoch by epoch (test LFR / PACC every 2 epochs,
the epoch's mean lambda), from the kept small files in runs-full/ (victim, ReTrain, RGA) and runs-hk-variants/
(hk-rga-variants.yaml). Writes hk-variants.md here.

    python experiments/agnews-all-attacks/hk_variants.py
"""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
CELLS = HERE / "runs-full" / "agnews" / "hiddenkiller", HERE / "runs-hk-variants" / "agnews" / "hiddenkiller"
METHODS = ["rga", "rga-a1", "rga-a05", "rga-select"]


def stage(method, seed):
    for cells in CELLS:
        path = cells / f"seed{seed}" / method
        if (path / "metrics.json").is_file():
            return path
    return None


def lambdas(path):
    by_epoch = {}
    for line in (path / "loss_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "lambda" in r:
            by_epoch.setdefault(r["epoch"], []).append(r["lambda"])
    return {e: statistics.fmean(v) for e, v in by_epoch.items()}


def main():
    seeds = sorted({int(p.name[4:]) for cells in CELLS if cells.is_dir() for p in cells.glob("seed*")})
    lines = ["| seed | method | α | select | test LFR / PACC at epochs 2, 4, 6, 8 | final ΔPACC (ReTrain PACC) | "
             "stopped at | mean λ, epochs 1 / 2 / 4 / 8 |", "|---|---|---|---|---|---|---|---|"]
    for seed in seeds:
        ref = json.loads((stage("retrain", seed) / "metrics.json").read_text())["metrics"]["test"]
        for method in METHODS:
            path = stage(method, seed)
            if path is None:
                continue
            m = json.loads((path / "metrics.json").read_text())
            cfg = m["config"]
            curve = " → ".join(f"{c['test']['lfr']:.1f} / {c['test']['pacc']:.1f}" for c in m["curve"] if "test" in c)
            lam = lambdas(path)
            lam_s = " / ".join(f"{lam[e]:.1e}" if e in lam else "–" for e in (1, 2, 4, 8))
            final = m["metrics"]["test"]
            stop = (m.get("select") or {}).get("selected_epoch")
            lines.append(f"| {seed} | {method} | {cfg['rga']['alpha']:g} | {cfg['select']['action']} | {curve} | "
                         f"{abs(final['pacc'] - ref['pacc']):.1f} ({ref['pacc']:.1f}) | "
                         f"{stop if stop is not None else '–'} | {lam_s} |")
    (HERE / "hk-variants.md").write_text(
        "# AG News HiddenKiller (authors' size): RGA variants, epoch by epoch\n\nWritten by `hk_variants.py` from "
        "runs-full/ and runs-hk-variants/. LFR pooled over the non-target triggered rows; ΔPACC = |PACC − ReTrain's "
        "PACC| of the same seed.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
