"""Collect the RGA-drift grid into curves.csv (one row per cell, variant and evaluated epoch) and
drift.png (shift gap and PACC - ReTrain against epoch, one panel per attack).

usage: python collect.py RESULTS_DIR OUT_DIR [TAG]
With TAG the files are curves-TAG.csv and drift-TAG.png. It prints a markdown table per attack (the
README's variant tables): each run's shift gap and PACC - ReTrain at epochs 4, 8, 12, 16 (or at every
evaluated epoch, where those were not all evaluated) and its last, and the worst shift gap over all its
evaluations; then, where runs reached epoch 30, the issue's target checked per attack on the default's
epoch-30 rows (target_check). Every call also merges its runs into
OUT_DIR/summary.csv (the issue's columns; a run already there is replaced): variant `default` is RGA at
the package's default settings, whatever the run's name (a fixed rga.ascent_lr_scale equal to what auto
gives the run counts as auto); any other variant keeps its method name.
The verdict of every epoch comes from unbackdoor.verdict.decide against the cell's ReTrain on the
same rows (intermediate epochs may be evaluated on a subset; then ReTrain's matrices are not the same
rows, and the verdict column says "n/a").
"""

import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from unbackdoor.artifacts import read_jsonl
from unbackdoor.grid import load_results
from unbackdoor.reporting import per_epoch
from unbackdoor.verdict import decide


def epoch_means(loss_log: Path) -> dict[int, dict]:
    """Per-epoch means of the logged step values (lambda, KL, CE on D_p and D_c, L2)."""
    log = read_jsonl(loss_log) if loss_log.is_file() else []
    means = defaultdict(dict)
    for key in ("lambda", "kl", "ce_p", "ce_c", "l2"):
        for epoch, value in zip(*per_epoch(log, key)):
            means[epoch][key] = value
    return means


# Issue 13's target at epoch 30: ΔPACC within 2 of ReTrain's, shift gap within 10 of ReTrain's.
MAX_DELTA, MAX_EXCESS = 2.0, 10.0

SUMMARY = ["variant", "attack", "seed", "rows", "epoch", "pacc", "retrain_pacc", "delta_pacc", "shift_gap",
           "retrain_shift_gap"]


def variant(run: dict) -> str:
    from unbackdoor.config import UnlearnConfig
    from unbackdoor.objectives.rga import auto_ascent_scale

    cfg = run["config"]
    loop = ("weight_decay", "reset_optimizer", "clean_sampling")  # the unlearning loop's switches RGA runs under
    package = UnlearnConfig(method="rga")
    if (cfg.get("method") != "rga" or not isinstance(cfg.get("rga"), dict)
            or any(cfg.get(k) != getattr(package, k) for k in loop)):
        return run["method"]
    # Validated, so a setting added since the run was made counts at the value the run had: its default,
    # except rga.ascent_lr_scale, which did not exist before it was 1 and whose default is now auto.
    ran = UnlearnConfig(method="rga", rga={"ascent_lr_scale": 1.0, **cfg["rga"]}).rga
    default = package.rga
    if ran.ascent_step == "separate" and ran.ascent_lr_scale != "auto":
        # A fixed scale equal to what auto gives on this run's rows, batch and lr is the default's run.
        select = run.get("select") or {}
        rows = run["n_poisoned"] - (select.get("n_heldout") or 0 if select.get("action", "off") != "off" else 0)
        auto = auto_ascent_scale(rows, cfg["batch_size"], cfg["lr"], default.min_epoch_ascent)
        if math.isclose(ran.ascent_lr_scale, auto, rel_tol=1e-9):
            ran = ran.model_copy(update={"ascent_lr_scale": "auto", "min_epoch_ascent": default.min_epoch_ascent})
    return "default" if ran.model_dump() == default.model_dump() else run["method"]


def merge_summary(path: Path, new: list[dict]) -> None:
    keys = {(r["variant"], r["attack"], str(r["seed"]), str(r["rows"])) for r in new}
    old = list(csv.DictReader(open(path))) if path.is_file() else []
    kept = [r for r in old if (r["variant"], r["attack"], r["seed"], r["rows"]) not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY)
        w.writeheader()
        for d in kept + new:
            w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in d.items()})


def main(results: Path, out: Path, tag: str = "") -> int:
    rows, summary = [], []
    stages = load_results(results)
    retrain = {(r["attack"], r["seed"]): r for r in stages if r["method"] == "retrain"}
    for r in stages:
        if r["method"] in ("retrain", "victim") or (r["attack"], r["seed"]) not in retrain:
            continue
        ref = retrain[(r["attack"], r["seed"])]["metrics"]["test"]
        meta = r["poison_meta"]
        means = epoch_means(r["dir"] / "loss_log.jsonl")
        for point in r["curve"]:
            m = point["test"]
            same_rows = m["n_triggered"] == ref["n_triggered"]
            v = decide(m, ref, meta["target"], meta["label_names"]).label if same_rows else "n/a"
            logged = means.get(point["epoch"], {})
            if same_rows:
                train_size = meta.get("config", {}).get("data", {}).get("train_size")
                summary.append({"variant": variant(r), "attack": r["attack"], "seed": r["seed"],
                                "rows": train_size or "all", "epoch": point["epoch"], "pacc": m["pacc"],
                                "retrain_pacc": ref["pacc"], "delta_pacc": abs(m["pacc"] - ref["pacc"]),
                                "shift_gap": m["target_shift_gap"], "retrain_shift_gap": ref["target_shift_gap"]})
            rows.append({"attack": r["attack"], "seed": r["seed"], "method": r["method"], "epoch": point["epoch"],
                         "n_triggered": m["n_triggered"], "cacc": m["cacc"], "lfr": m["lfr"], "pacc": m["pacc"],
                         "pacc_minus_retrain": m["pacc"] - ref["pacc"], "shift_gap": m["target_shift_gap"],
                         "retrain_shift_gap": ref["target_shift_gap"],
                         "verdict": v, **{k: logged.get(k, "") for k in ("lambda", "kl", "ce_p", "ce_c", "l2")}})
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{tag}" if tag else ""
    merge_summary(out / "summary.csv", summary)
    with open(out / f"curves{suffix}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for d in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in d.items()})
    plot(rows, out / f"drift{suffix}.png")
    evaluated = sorted({r["epoch"] for r in rows})
    print(markdown(rows) if {4, 8, 12, 16} <= set(evaluated) else markdown(rows, tuple(evaluated[:-1])))
    print(by_variant(rows))
    print(target_check(summary))
    return 0


def target_check(summary: list[dict], epoch: int = 30, max_delta: float = MAX_DELTA,
                 max_excess: float = MAX_EXCESS) -> str:
    """Issue 13's target on the default's rows at `epoch`, one line per attack: ΔPACC per seed, its mean and
    sample sd, runs within max_delta, the largest shift-gap excess over ReTrain's, and whether the target
    holds. ΔPACC is judged on the mean over seeds (as the paper reports it) and the gap in every run."""
    final = [r for r in summary if r["variant"] == "default" and r["epoch"] == epoch]
    if not final:
        return ""
    out = ["", f"| attack | ΔPACC at epoch {epoch}, per seed | mean ± sd | runs ≤ {max_delta:g} "
           f"| largest gap − ReTrain's | target (mean ΔPACC ≤ {max_delta:g}, every gap within {max_excess:g}) |",
           "|---|---|---|---|---|---|"]
    for attack in sorted({r["attack"] for r in final}):
        runs = sorted((r for r in final if r["attack"] == attack), key=lambda r: r["seed"])
        deltas = [r["delta_pacc"] for r in runs]
        mean = statistics.fmean(deltas)
        sd = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
        excess = max(r["shift_gap"] - r["retrain_shift_gap"] for r in runs)
        misses = [part for part, ok in (("ΔPACC", mean <= max_delta), ("gap", excess <= max_excess)) if not ok]
        out.append(f"| {attack} | " + " / ".join(f"{d:.2f} (s{r['seed']})" for d, r in zip(deltas, runs))
                   + f" | {mean:.2f} ± {sd:.2f} | {sum(d <= max_delta for d in deltas)} of {len(deltas)} "
                   f"| {excess:+.1f} | {'holds' if not misses else 'misses: ' + ', '.join(misses)} |")
    return "\n".join(out)


def by_variant(rows: list[dict], upto: int = 16) -> str:
    """One line per variant over all seeds, epochs up to `upto` only (the one-switch variants run 16): per
    attack that has variants, the gap at `upto` per seed, the worst gap, and PACC - ReTrain at `upto` per seed."""
    attacks = sorted({r["attack"] for r in rows if r["method"] != "rga"})  # where variants ran
    if not attacks:
        return ""
    head = "| variant | " + " | ".join(f"{a}: gap at {upto}, per seed | worst gap to {upto} | PACC − ReTrain at {upto}"
                                         for a in attacks) + " |"
    out = ["", head, "|---" * (1 + 3 * len(attacks)) + "|"]
    for method in sorted({r["method"] for r in rows}):
        cells = []
        for a in attacks:
            pts = [r for r in rows if r["method"] == method and r["attack"] == a and r["epoch"] <= upto]
            if not pts:
                cells += ["–"] * 3
                continue
            seeds = sorted({r["seed"] for r in pts})
            at = {s: next((r for r in pts if r["seed"] == s and r["epoch"] == upto), None) for s in seeds}
            worst = max(pts, key=lambda r: r["shift_gap"])
            ref = sorted({f"{r['retrain_shift_gap']:+.0f}" for r in pts})
            cells += [" / ".join(f"{at[s]['shift_gap']:+.0f}" if at[s] else "–" for s in seeds)
                      + f" (ReTrain {' / '.join(ref)})",
                      f"{worst['shift_gap']:+.0f} (s{worst['seed']}, epoch {worst['epoch']})",
                      " / ".join(f"{at[s]['pacc_minus_retrain']:+.1f}" if at[s] else "–" for s in seeds)]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def markdown(rows: list[dict], epochs=(4, 8, 12, 16)) -> str:
    """Gap / PACC - ReTrain per run at `epochs` and at its last evaluation, and its worst gap, per attack."""
    out = []
    for attack in sorted({r["attack"] for r in rows}):
        out += [f"\n{attack}\n", "| variant | seed | " + " | ".join(f"epoch {e}" for e in epochs)
                + " | last epoch | worst gap (epoch) | ReTrain's gap |", "|---" * (len(epochs) + 5) + "|"]
        for method, seed in sorted({(r["method"], r["seed"]) for r in rows if r["attack"] == attack}):
            pts = {r["epoch"]: r for r in rows if (r["attack"], r["method"], r["seed"]) == (attack, method, seed)}
            cell = lambda r: f"{r['shift_gap']:+.1f} / {r['pacc_minus_retrain']:+.1f}" if r else "–"  # noqa: E731
            last = pts[max(pts)]
            worst = max(pts.values(), key=lambda r: r["shift_gap"])
            out.append(f"| {method} | {seed} | " + " | ".join(cell(pts.get(e)) for e in epochs)
                       + f" | {last['epoch']}: {cell(last)} | {worst['shift_gap']:+.1f} ({worst['epoch']}) "
                       f"| {last['retrain_shift_gap']:+.1f} |")
    return "\n".join(out)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = sorted({r["attack"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    dash = {seed: ("-", "--", ":", "-.")[i % 4] for i, seed in enumerate(seeds)}  # one line style per seed
    fig, axes = plt.subplots(2, len(attacks), figsize=(5 * len(attacks), 7), squeeze=False, sharex=True)
    for j, attack in enumerate(attacks):
        for method in sorted({r["method"] for r in rows if r["attack"] == attack}):
            for seed in seeds:
                pts = [r for r in rows if r["attack"] == attack and r["method"] == method and r["seed"] == seed]
                if not pts:
                    continue
                # The default and the paper's step stand out; the one-switch variants of the paper's step
                # are one grey family, since the point is that none of them departs from it.
                look = {"rga": dict(color="black", lw=2), "rga-joint": dict(color="tab:red", lw=1.5)}.get(
                    method, dict(color="grey", lw=0.8, alpha=0.6))
                label = f"{method} s{seed}" if method in ("rga", "rga-joint") else None
                style = dict(label=label, marker="o", ms=3, ls=dash[seed], **look)
                axes[0][j].plot([p["epoch"] for p in pts], [p["shift_gap"] for p in pts], **style)
                axes[1][j].plot([p["epoch"] for p in pts], [p["pacc_minus_retrain"] for p in pts], **style)
        axes[0][j].set_title(attack)
        # The target, one line per seed's ReTrain.
        for seed in seeds:
            ref = next((r["retrain_shift_gap"] for r in rows if r["attack"] == attack and r["seed"] == seed), None)
            if ref is not None:
                axes[0][j].axhline(ref + MAX_EXCESS, color="grey", lw=0.8, ls=dash[seed])
        axes[0][j].set_ylabel("shift gap (points); grey: ReTrain's + 10")
        axes[1][j].axhspan(-MAX_DELTA, MAX_DELTA, color="grey", alpha=0.15)
        axes[1][j].set_ylabel("PACC − ReTrain")
        axes[1][j].set_xlabel("unlearning epoch")
    if any(r["method"] not in ("rga", "rga-joint") for r in rows):  # the grey family is drawn
        axes[0][0].plot([], [], color="grey", lw=0.8, label="joint step, one setting changed")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4]))
