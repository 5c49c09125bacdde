"""Paper-style tables (Markdown, CSV, LaTeX) and figures (PNG + PDF) from a results folder."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path

from .artifacts import atomic_write_text, read_jsonl
from .evaluation import delta_pacc

METHOD_ORDER = ["victim", "retrain", "ga", "npo", "rga", "finetune", "fineprune", "graddiff", "simnpo", "taskvector"]
METHOD_NAMES = {"victim": "Poisoned", "retrain": "ReTrain", "ga": "GA", "npo": "NPO", "rga": "RGA",
                "finetune": "Fine-tuning", "fineprune": "Fine-Pruning", "graddiff": "GradDiff", "simnpo": "SimNPO",
                "taskvector": "Task vector"}
COLUMNS = [("cacc", "CACC"), ("lfr", "LFR"), ("pacc", "PACC"), ("delta_pacc", "ΔPACC"),
           ("signed_delta_pacc", "PACC − ReTrain"), ("target_shift_gap", "Shift gap")]
# With more than two classes LFR has two readings: pooled over every non-target row (ours), and the
# authors' mean over the non-target classes. Both are shown there, each labelled.
MACRO_LFR = ("lfr_macro", "LFR (class mean)")


def _columns(rows) -> list[tuple[str, str]]:
    if any(r.get("classes", 2) > 2 for r in rows):
        return [COLUMNS[0], ("lfr", "LFR (pooled)"), MACRO_LFR, *COLUMNS[2:]]
    return COLUMNS
REFERENCES = ("victim", "retrain")  # rows that are not an unlearning method's result
# The paper's Table 2 blocks, in its order; other datasets follow alphabetically.
DATASET_ORDER = ["sst2", "hsol", "agnews"]
DATASET_NAMES = {"sst2": "SST-2", "hsol": "HSOL", "agnews": "AG News"}
# The paper's poisoning (SPEC §3); a row poisoned otherwise carries its setting in the attack column.
PAPER_SETTING = "replace 50%"


def poisoning_setting(meta: dict) -> str:
    """"replace 50%", "add 10%, imported train_poisoned.csv", ... from a poisoned set's meta.json."""
    how = meta.get("poisoning") or {"source": "attack", "mode": meta.get("mode"), "rate": meta.get("rate")}
    if how.get("mode") is None or how.get("rate") is None:
        return "unknown"
    setting = f"{how['mode']} {round(100 * how['rate'], 1):g}%"
    return setting + (f", imported {Path(how['file']).name}" if how["source"] == "file" else "")


def _requested_rows(meta: dict):
    config = meta.get("config")
    return config.get("data", {}).get("train_size", "all") if isinstance(config, dict) else "unknown"


def settings_of(results: list[dict]) -> list[str]:
    """Each result's poisoning setting; where one dataset's cells were trained on different numbers of rows
    (data_overrides), each setting also names its training rows, so rows of one size are never averaged with
    or compared against another's, and the table says which is which."""
    setting = [poisoning_setting(r.get("poison_meta", {})) for r in results]
    sizes = defaultdict(set)
    for r in results:
        sizes[r["dataset"]].add(_requested_rows(r.get("poison_meta", {})))
    for i, r in enumerate(results):
        rows = r.get("poison_meta", {}).get("counts", {}).get("train")
        if len(sizes[r["dataset"]]) > 1 and rows is not None:
            setting[i] += f", {rows:,} training rows"
    return setting


def _dataset_rank(dataset: str) -> tuple:
    return (DATASET_ORDER.index(dataset), "") if dataset in DATASET_ORDER else (len(DATASET_ORDER), dataset)


def _attack_cell(r) -> str:
    return r["attack"] + (f" ({r['setting']})" if r["setting"] != PAPER_SETTING else "")


def _mean_std(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _verdict_label(labels: list[str]) -> str:
    """One seed's verdict, or the split over seeds ("shifted (partly) 2/3, neutralised 1/3")."""
    counts = defaultdict(int)
    for v in labels:
        counts[v] += 1
    if len(counts) == 1:
        return labels[0]
    return ", ".join(f"{v} {n}/{len(labels)}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def training_cost(result: dict) -> tuple[float | None, float | None]:
    """(wall, CPU) seconds a stage spent making its model, its evaluations left out: the loop's clocks at
    the last epoch, which run through the evaluations of the epochs before it but stop before the last
    one's. CPU is None for runs made before it was recorded."""
    history = result.get("history") or []
    if not history:
        return None, None
    last, before = history[-1], history[:-1]
    out = []
    for clock, evals in (("seconds", "eval_seconds"), ("cpu_seconds", "eval_cpu_seconds")):
        total = last.get(clock)
        out.append(None if total is None else total - sum(h.get(evals) or 0.0 for h in before))
    return out[0], out[1]


# The numbers beyond Table 2's columns: cost, relearning (probes.relearn) and trigger variants
# (probes.trigger_variants). Named per K and per variant, so only what a run measured shows.
COST_COLUMNS = [("wall_s", "wall s"), ("cpu_s", "CPU s"), ("cpu_vs_retrain", "CPU ÷ ReTrain")]
RELEARN, VARIANT = "relearn_lfr_", "variant_lfr_"


def _is_extra(key: str) -> bool:
    return key in dict(COST_COLUMNS) or key.startswith((RELEARN, VARIANT))


def extra_numbers(result: dict, split: str) -> dict:
    """One stage's cost and, where it was probed, its relearned LFR per K (and the excess over ReTrain's
    after the same relearning) and its LFR on each trigger variant."""
    wall, cpu = training_cost(result)
    out = {"wall_s": wall, "cpu_s": cpu}
    probes = result.get("probes", {}).get(split, {})
    out.update({k: v for k, v in probes.items() if k.startswith(("relearn_lfr_", "relearn_lfr_excess_"))})
    out.update({VARIANT + name: v["lfr"] for name, v in probes.get("trigger_variants", {}).items()})
    return out


def extra_columns(rows) -> list[tuple[str, str]]:
    """The cost, relearning and variant columns that some row has a number for, in a fixed order."""
    have = {k for r in rows for k, v in r.items() if _is_extra(k) and not k.endswith("_std") and v is not None}
    ks = sorted({int(k[len(RELEARN):]) for k in have if k.startswith(RELEARN) and k[len(RELEARN):].isdigit()})
    cols = [c for c in COST_COLUMNS if c[0] in have]
    for k in ks:
        cols += [(f"{RELEARN}{k}", f"LFR relearned K={k}"), (f"relearn_lfr_excess_{k}", f"− ReTrain's (K={k})")]
    cols += [(k, "LFR " + k[len(VARIANT):].replace("_", " ")) for k in sorted(have) if k.startswith(VARIANT)]
    return [c for c in cols if c[0] in have]


def table_extras_markdown(rows) -> str:
    """Cost, "removed or suppressed?" and trigger variants, one row per method; "" when nothing was measured."""
    cols = extra_columns(rows)
    if not any(k != "wall_s" for k, _ in cols):
        return ""
    lines = ["## Cost, relearning and trigger variants", "",
             "**CPU s**: CPU seconds (all threads) to make the model, evaluations left out; **CPU ÷ ReTrain** the "
             "same over ReTrain's of the seed. **LFR relearned K**: LFR after fine-tuning on K poisoned training "
             "rows, with K clean rows of every other class unless `probes.relearn_mix: poisoned` (`probes.relearn`, "
             "its steps and lr in each probes.json); **− ReTrain's**: the same minus ReTrain's after the same steps, so a removed "
             "backdoor reads near 0 and a suppressed one well above. **LFR <variant>**: the trigger moved or cut "
             "(`probes.trigger_variants`; *other word* is a rare word that never was a trigger, the control).", "",
             "| dataset | attack | method | " + " | ".join(n for _, n in cols) + " |", "|" + "---|" * (3 + len(cols))]
    for r in rows:
        cells = []
        for k, _ in cols:
            v, sd = r.get(k), r.get(k + "_std")
            if k in ("wall_s", "cpu_s") and v is not None:
                cells.append(f"{v:.0f}")
            elif k == "cpu_vs_retrain" and v is not None:
                cells.append(f"{v:.2f}×")
            else:
                cells.append(_fmt(v, sd, r["seeds"], signed=k.startswith("relearn_lfr_excess_")))
        lines.append(f"| {r['dataset']} | {_attack_cell(r)} | {_name(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarise(results: list[dict], split: str = "test") -> list[dict]:
    """One row per (dataset, attack, method): mean and std over seeds; dPACC, the signed PACC difference
    and the verdict against ReTrain of the same seed. A degenerate ReTrain gives no dPACC and no verdict."""
    from .evaluation import degenerate_reason
    from .verdict import decide

    # Runs poisoned in different settings are different experiments: never averaged or compared together.
    setting = settings_of(results)
    retrain = {(r["dataset"], r["attack"], st, r["seed"]): r["metrics"][split] for r, st in zip(results, setting)
               if r["method"] == "retrain" and split in r["metrics"]}
    cost = {(r["dataset"], r["attack"], st, r["seed"]): training_cost(r)[1] for r, st in zip(results, setting)
            if r["method"] == "retrain"}
    groups, objective = defaultdict(list), {}
    for r, st in zip(results, setting):
        m = r["metrics"].get(split)
        if m is None:
            continue
        m = {**dict(m), **extra_numbers(r, split)}
        ref_cpu = cost.get((r["dataset"], r["attack"], st, r["seed"]))
        m["cpu_vs_retrain"] = m["cpu_s"] / ref_cpu if m["cpu_s"] is not None and ref_cpu else None
        ref = retrain.get((r["dataset"], r["attack"], st, r["seed"]))
        usable = ref is not None and not degenerate_reason(ref)
        m["delta_pacc"] = delta_pacc(m, ref) if usable else None
        m["signed_delta_pacc"] = m["pacc"] - ref["pacc"] if usable else None
        m["degenerate"] = degenerate_reason(m)
        if r["method"] == "retrain":
            m["verdict"] = "reference"
        else:
            meta = r.get("poison_meta", {})
            m["verdict"] = decide(m, ref, meta.get("target", 0), meta.get("label_names") or
                                  [str(i) for i in range(len(m["confusion_triggered"]))]).label
        key = (r["dataset"], r["attack"], st, r["method"])
        groups[key].append(m)
        # A named variant (npo-b1) runs one of the paper's objectives: compared with that objective's numbers.
        objective[key] = r["method"] if r["method"] in REFERENCES else r.get("config", {}).get("method", r["method"])
    rows = []
    for (dataset, attack, st, method), ms in groups.items():
        row = {"dataset": dataset, "attack": attack, "setting": st, "method": method, "seeds": len(ms),
               "objective": objective[dataset, attack, st, method]}
        for key in [k for k, _ in [*COLUMNS, MACRO_LFR]] + sorted({k for m in ms for k in m if _is_extra(k)}):
            row[key], row[key + "_std"] = _mean_std([m.get(key) for m in ms])
        row["classes"] = len(ms[0]["confusion_triggered"])
        row["verdict"] = _verdict_label([m["verdict"] for m in ms])
        row["degenerate"] = next((m["degenerate"] for m in ms if m["degenerate"]), None)
        rows.append(row)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (_dataset_rank(r["dataset"]), r["attack"], r["setting"], order.get(r["method"], 99),
                             r["method"]))
    return rows


def _best_delta(rows):
    """Smallest dPACC per (dataset, attack) among unlearning rows that neutralised the trigger in
    every seed: a row that shifted the trigger is never "best", however close its PACC."""
    best = {}
    for r in rows:
        if (r["method"] not in REFERENCES and r["delta_pacc"] is not None and r["verdict"] == "neutralised"
                and not r["degenerate"]):
            k = (r["dataset"], r["attack"], r["setting"])
            best[k] = min(best.get(k, float("inf")), r["delta_pacc"])
    return best


def _is_best(row, best) -> bool:
    return row["method"] not in REFERENCES and row["verdict"] == "neutralised" and \
        row["delta_pacc"] == best.get((row["dataset"], row["attack"], row["setting"]))


def _fmt(mean, std, seeds, signed=False):
    if mean is None:
        return "–"
    # + 0.0 turns a rounded -0.0 into 0.0, so an exact match prints +0.00, not -0.00.
    s = f"{round(mean, 2) + 0.0:+.2f}" if signed else f"{mean:.2f}"
    return s + (f" ± {std:.2f}" if seeds > 1 else "")


def _name(r) -> str:
    name = METHOD_NAMES.get(r["method"], r["method"])
    return name + (" ⚠ degenerate" if r.get("degenerate") else "")


def _cells(r, best, bold, columns=COLUMNS):
    cells = []
    for key, _ in columns:
        s = _fmt(r[key], r[key + "_std"], r["seeds"], signed=key in ("signed_delta_pacc", "target_shift_gap"))
        if key == "delta_pacc" and _is_best(r, best):
            s = bold(s)
        cells.append(s)
    return cells + [r["verdict"]]


def _blocks(rows) -> list[tuple[str, list[dict]]]:
    """(dataset, its rows) in the paper's order; rows are already sorted by dataset."""
    out = []
    for r in rows:
        if not out or out[-1][0] != r["dataset"]:
            out.append((r["dataset"], []))
        out[-1][1].append(r)
    return out


def table_markdown(rows) -> str:
    """One table, or with several datasets one block per dataset (each with its own LFR columns)."""
    best, blocks, lines = _best_delta(rows), _blocks(rows), []
    for dataset, block in blocks:
        columns = _columns(block)
        if len(blocks) > 1:
            lines += [f"### {DATASET_NAMES.get(dataset, dataset)}", ""]
        lines += ["| dataset | attack | method | " + " | ".join(n for _, n in columns) + " | verdict |",
                  "|" + "---|" * (4 + len(columns))]
        for r in block:
            lines.append(f"| {r['dataset']} | {_attack_cell(r)} | {_name(r)} | "
                         + " | ".join(_cells(r, best, lambda s: f"**{s}**", columns)) + " |")
        lines.append("")
    lines.pop()
    notes = [f"- {r['dataset']}/{r['attack']}/{_name(r)}: {r['degenerate']}" for r in rows if r["degenerate"]]
    if notes:
        lines += ["", "**Degenerate models** (their numbers mean little; no ΔPACC or verdict against a degenerate "
                  "ReTrain):", *notes]
    return "\n".join(lines) + "\n"


def table_csv(rows) -> str:
    buf = io.StringIO()
    keys = ["dataset", "attack", "method", "seeds"] + [k for c, _ in _columns(rows) for k in (c, c + "_std")] + \
        ["verdict", "degenerate", "poisoning"] + [k for c, _ in extra_columns(rows) for k in (c, c + "_std")]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows({**r, "poisoning": r["setting"]} for r in rows)
    return buf.getvalue()


def table_latex(rows) -> str:
    best, columns = _best_delta(rows), _columns(rows)
    out = ["\\begin{tabular}{lll" + "r" * len(columns) + "l}", "\\toprule",
           "Dataset & Attack & Method & " + " & ".join(n.replace("Δ", "$\\Delta$").replace("−", "$-$")
                                                       for _, n in columns) + " & Verdict \\\\", "\\midrule"]
    for r in rows:
        cells = [c.replace("±", "$\\pm$").replace("⚠", "") for c in _cells(r, best, lambda s: f"\\textbf{{{s}}}", columns)]
        attack = _attack_cell(r).replace("%", "\\%").replace("_", "\\_")
        out.append(f"{r['dataset']} & {attack} & {_name(r).replace('⚠', '(!)')} & " + " & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


# The paper's BERT-base numbers (Table 2 for ReTrain/GA/NPO/RGA, Table 3 for the poisoned model):
# 3-seed means, (LFR, PACC) per dataset, attack and method. Reports put every matching cell of a
# results folder next to them, so a reader sees at once where a run reproduces the paper.
PAPER_BERT = {
    ("sst2", "badnets"): {"victim": (100.00, 49.92), "retrain": (12.31, 90.54), "ga": (0.00, 50.08),
                          "npo": (1.32, 74.24), "rga": (13.37, 90.34)},
    ("sst2", "addsent"): {"victim": (100.00, 49.92), "retrain": (21.19, 87.28), "ga": (0.00, 50.08),
                          "npo": (0.00, 52.66), "rga": (11.73, 89.57)},
    ("sst2", "hiddenkiller"): {"victim": (97.33, 51.11), "retrain": (28.69, 74.39), "ga": (0.55, 52.58),
                               "npo": (1.24, 53.89), "rga": (25.22, 74.55)},
    ("sst2", "stylebkd"): {"victim": (86.80, 55.64), "retrain": (23.57, 80.85), "ga": (2.59, 64.29),
                           "npo": (3.66, 69.08), "rga": (17.40, 81.13)},
    ("hsol", "badnets"): {"victim": (100.00, 49.98), "retrain": (7.35, 94.74), "ga": (0.00, 50.25),
                          "npo": (0.29, 58.62), "rga": (7.08, 94.81)},
    ("hsol", "addsent"): {"victim": (100.00, 49.98), "retrain": (8.42, 94.46), "ga": (0.00, 50.02),
                          "npo": (0.03, 54.01), "rga": (6.33, 94.89)},
    ("hsol", "hiddenkiller"): {"victim": (99.41, 50.21), "retrain": (48.19, 74.47), "ga": (0.21, 50.30),
                               "npo": (0.43, 50.84), "rga": (44.86, 74.70)},
    ("hsol", "stylebkd"): {"victim": (95.36, 52.25), "retrain": (35.77, 81.02), "ga": (2.68, 68.53),
                           "npo": (3.19, 70.78), "rga": (35.13, 80.83)},
    ("agnews", "badnets"): {"victim": (80.58, 38.80), "retrain": (1.11, 90.20), "ga": (1.11, 60.13),
                            "npo": (2.22, 88.70), "rga": (2.98, 88.76)},
    ("agnews", "addsent"): {"victim": (99.65, 25.27), "retrain": (1.24, 90.10), "ga": (0.00, 25.03),
                            "npo": (2.22, 89.63), "rga": (4.17, 89.59)},
    ("agnews", "hiddenkiller"): {"victim": (87.11, 33.73), "retrain": (2.31, 79.43), "ga": (0.13, 38.23),
                                 "npo": (1.60, 74.40), "rga": (8.00, 80.13)},
    ("agnews", "stylebkd"): {"victim": (58.26, 52.90), "retrain": (1.77, 83.29), "ga": (2.35, 73.73),
                             "npo": (1.91, 81.83), "rga": (10.44, 82.46)},
}


def paper_comparison(rows) -> str:
    """The paper's Table 2, one block per dataset: our LFR and PACC next to its BERT-base numbers, then our
    ΔPACC and verdict ("" if no row has a counterpart in the paper)."""
    out = []
    for dataset, block in _blocks(rows):
        # The paper's LFR for more than two classes is the authors' class mean: show ours both ways beside it.
        multi = any(r.get("classes", 2) > 2 for r in block)
        lines = []
        for r in block:
            paper = PAPER_BERT.get((dataset, r["attack"]), {}).get(r["objective"])
            if paper is None or r["pacc"] is None:
                continue
            lfr = _fmt(r["lfr"], r["lfr_std"], r["seeds"])
            if multi:
                lfr += " | " + _fmt(r["lfr_macro"], r["lfr_macro_std"], r["seeds"])
            # + 0.0 turns a rounded -0.0 into 0.0, so an exact match prints +0.00, not -0.00.
            lines.append(f"| {dataset} | {_attack_cell(r)} | {METHOD_NAMES.get(r['method'], r['method'])} | {lfr} | "
                         f"{paper[0]:.2f} | {_fmt(r['pacc'], r['pacc_std'], r['seeds'])} | {paper[1]:.2f} | "
                         f"{round(r['pacc'] - paper[1], 2) + 0.0:+.2f} | "
                         f"{_fmt(r['delta_pacc'], r['delta_pacc_std'], r['seeds'])} | {r['verdict']} |")
        if lines:
            head = "LFR (pooled) | LFR (class mean)" if multi else "LFR"
            out += [f"### {DATASET_NAMES.get(dataset, dataset)}", "",
                    f"| dataset | attack | method | {head} | paper LFR | PACC | paper PACC | PACC − paper | ΔPACC | verdict |",
                    "|" + "---|" * (10 + multi), *lines, ""]
    if not out:
        return ""
    return "\n".join(["## Against the paper (BERT-base, Tables 2 and 3, 3-seed means)", "",
                      "A named variant (e.g. npo-b1) stands beside the paper's row of the objective it runs. An attack "
                      f"followed by a setting in brackets was poisoned otherwise than the paper's {PAPER_SETTING}, or "
                      "names its training rows where its dataset's cells were trained on different numbers of rows.", "",
                      *out])


# ---------------------------------------------------------------- figures

def _save(fig, path: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    outs = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        tmp = p.with_name(f".{p.stem}.tmp.{ext}")
        # No creation date in the PDF: the same results give the same file, so regenerated reports diff cleanly.
        fig.savefig(tmp, dpi=130, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        tmp.replace(p)
        outs.append(p)
    plt.close(fig)
    return outs


def per_epoch(log: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, mean of `key` over each epoch's loss-log lines), for the lines that have it."""
    by = defaultdict(list)
    for r in log:
        if key in r:
            by[r["epoch"]].append(r[key])
    epochs = sorted(by)
    return epochs, [statistics.fmean(by[e]) for e in epochs]


def figure_poisoned_loss(cell_results: dict[str, dict], path: Path, log_scale: bool = True):
    """Paper Figure 4: CE on D_p (w.r.t. the poisoned label) per unlearning epoch, GA vs NPO vs RGA."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method in ("ga", "npo", "rga"):
        if method in cell_results:
            e, v = per_epoch(read_jsonl(cell_results[method]["dir"] / "loss_log.jsonl"), "ce_p")
            ax.plot(e, v, marker="o", ms=3, label=METHOD_NAMES[method])
    ax.set_xlabel("unlearning epoch")
    ax.set_ylabel("poisoned loss CE(D_p)")
    if log_scale:
        ax.set_yscale("log")
    ax.legend()
    ax.set_title("Poisoned-set loss during unlearning")
    return fig, _save(fig, path)


def figure_confusions(cell_results: dict[str, dict], label_names: list[str], path: Path, split: str = "test"):
    """Paper Figure 3: confusion matrices on the all-class triggered test set."""
    import matplotlib.pyplot as plt

    methods = [m for m in METHOD_ORDER if m in cell_results and split in cell_results[m]["metrics"]]
    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods), 2.8), squeeze=False)
    for ax, m in zip(axes[0], methods):
        cm = cell_results[m]["metrics"][split]["confusion_triggered"]
        ax.imshow(cm, cmap="Blues")
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(label_names)), label_names, rotation=45, fontsize=7)
        ax.set_yticks(range(len(label_names)), label_names if ax is axes[0][0] else [], fontsize=7)
        ax.set_title(METHOD_NAMES.get(m, m), fontsize=9)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("true (triggered)", fontsize=7)
    fig.suptitle("Triggered test set, trigger in every class", fontsize=9)
    fig.tight_layout()
    return fig, _save(fig, path)


def figure_training_dynamics(result: dict, path: Path, split: str = "test"):
    """Paper Figure 2: clean and poisoned loss per epoch, and clean F1 per evaluation epoch."""
    import matplotlib.pyplot as plt

    log = read_jsonl(result["dir"] / "loss_log.jsonl")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for key, name in (("ce_c", "clean loss CE(D_c)"), ("ce_p", "poisoned loss CE(D_p)")):
        e, v = per_epoch(log, key)
        a1.plot(e, v, marker="o", ms=3, label=name)
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend(fontsize=7)
    curve = [c for c in result.get("curve", []) if split in c]
    a2.plot([c["epoch"] for c in curve], [c[split]["f1_clean"] for c in curve], marker="o", label="clean F1")
    a2.plot([c["epoch"] for c in curve], [c[split]["pacc"] for c in curve], marker="s", label="PACC")
    a2.set_xlabel("epoch")
    a2.set_ylabel("%")
    a2.legend(fontsize=7)
    fig.suptitle(f"{METHOD_NAMES.get(result['method'], result['method'])}: unlearning dynamics", fontsize=9)
    return fig, _save(fig, path)


def figure_shift_dynamics(cell: dict, path: Path, split: str = "test"):
    """PACC and target-class shift gap per unlearning epoch, ReTrain as a horizontal line: the trigger
    of a shifting method moves away from ReTrain's line while a neutralising one stays on it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    ref = cell.get("retrain", {}).get("metrics", {}).get(split)
    victim = cell.get("victim", {}).get("metrics", {}).get(split)
    for ax, key, name in zip(axes, ("pacc", "target_shift_gap"), ("PACC (%)", "shift gap (points)")):
        for m in ("ga", "npo", "rga"):
            curve = [c for c in cell.get(m, {}).get("curve", []) if split in c]
            if curve:
                xs, ys = [c["epoch"] for c in curve], [c[split][key] for c in curve]
                if victim:
                    xs, ys = [0] + xs, [victim[key]] + ys
                ax.plot(xs, ys, marker="o", ms=3, label=METHOD_NAMES[m])
        if ref:
            ax.axhline(ref[key], color="k", ls="--", lw=1, label="ReTrain")
        ax.set_xlabel("unlearning epoch (0 = poisoned model)")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Does the trigger move? ({split} split)", fontsize=9)
    fig.tight_layout()
    return fig, _save(fig, path)


def figure_cost(rows, path: Path) -> list[Path]:
    """ΔPACC against CPU cost relative to ReTrain, one point per (attack, method), the marker open where
    the verdict is not *neutralised* or the model is degenerate; [] when no row has both numbers."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    points = [r for r in rows if r["method"] not in REFERENCES and r.get("cpu_vs_retrain") is not None
              and r.get("delta_pacc") is not None]
    if not points:
        return []
    methods = list(dict.fromkeys(r["method"] for r in points))
    attacks = list(dict.fromkeys(_attack_cell(r) for r in points))
    colours, markers = plt.get_cmap("tab10"), "osD^vP*X"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in points:
        c = colours(methods.index(r["method"]) % 10)
        ax.scatter(r["cpu_vs_retrain"], r["delta_pacc"], s=46, marker=markers[attacks.index(_attack_cell(r)) % 8],
                   edgecolors=c, facecolors=c if r["verdict"] == "neutralised" and not r["degenerate"] else "none",
                   linewidths=1.4)
    for i, m in enumerate(methods):
        ax.scatter([], [], color=colours(i % 10), marker="s", label=METHOD_NAMES.get(m, m))
    for j, a in enumerate(attacks):
        ax.scatter([], [], color="grey", marker=markers[j % 8], label=a)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    # Ticks at 1-2-5 with plain labels: the default log labels (3×10⁻¹ ...) overlap on a span under one decade.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("CPU time to make the model ÷ ReTrain's (log)")
    ax.set_ylabel("ΔPACC (lower = closer to ReTrain)")
    ax.set_title("Removal: accuracy under the trigger against cost (open: not neutralised, or degenerate)", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return _save(fig, path)


def figure_lambda(result: dict, path: Path):
    """RGA's adaptive weight lambda per step."""
    import matplotlib.pyplot as plt

    log = [r for r in read_jsonl(result["dir"] / "loss_log.jsonl") if "lambda" in r]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["step"] for r in log], [r["lambda"] for r in log], label="λ = exp(-α·KL)")
    ax.set_xlabel("step")
    ax.set_ylabel("λ")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("RGA: weight of the ascent term")
    return fig, _save(fig, path)


# ---------------------------------------------------------------- the report

def load_many(results_dirs: list[Path]) -> list[dict]:
    """The finished stages of several results folders (e.g. one per dataset), each stage taken once."""
    from .errors import DataError
    from .grid import load_results

    seen, results = {}, []
    for d in results_dirs:
        found = load_results(d)
        if not found:
            raise DataError(f"{d}: no finished runs (no */*/seed*/*/metrics.json)")
        for r in found:
            key = (r["dataset"], r["attack"], r["seed"], r["method"])
            if key in seen:
                # Two runs of one stage would count twice in its mean and overwrite each other's figures.
                raise DataError(f"{key[0]}/{key[1]}/seed{key[2]}/{key[3]} is in two results folders ({seen[key]} and "
                                f"{r['dir']}); report each stage once")
            seen[key] = r["dir"]
        results += found
    return results


def write_report(results_dir: str | Path | list, out_dir: str | Path | None = None, split: str = "test",
                 log_scale: bool = True, extra_md: str = "", title: str | None = None, figures: bool = True) -> Path:
    """The report of one results folder, or one report (one Table 2) over several. figures=False writes the
    tables and per-cell text only: a report over folders whose figures another report already drew."""
    from .errors import DataError

    dirs = [Path(d) for d in results_dir] if isinstance(results_dir, (list, tuple)) else [Path(results_dir)]
    if out_dir is None and len(dirs) > 1:
        raise DataError("a report over several results folders needs an output folder (--out)")
    out = Path(out_dir) if out_dir else dirs[0] / "report"
    results = load_many(dirs)
    rows = summarise(results, split)
    atomic_write_text(out / "table.md", table_markdown(rows))
    atomic_write_text(out / "table.csv", table_csv(rows))
    atomic_write_text(out / "table.tex", table_latex(rows))
    md = [f"# {title or 'Backdoor unlearning report: ' + ', '.join(f'`{d}`' for d in dirs)}", "",
          "Columns (percent, on the test split): **CACC** clean accuracy; **LFR** share of triggered non-target "
          "samples predicted as the target (lower = backdoor removed; with more than two classes *pooled* over all "
          "non-target rows, and the authors' *class mean* over the non-target classes); **PACC** accuracy on the triggered test set "
          "with the trigger in *every* class (true labels); **ΔPACC** |PACC − PACC(ReTrain)| (lower = closer to "
          "a model never poisoned; bold: the smallest among rows whose verdict is *neutralised*); **PACC − ReTrain** "
          "the signed difference (negative: the trigger now costs accuracy that ReTrain keeps); **Shift gap** "
          "target-class recall on clean minus on triggered inputs (large = trigger shifting: triggered target-class "
          "samples flipped away); **verdict** from the triggered and clean confusion matrices against ReTrain's "
          "(`unbackdoor.verdict`): *backdoor* (the trigger still sends samples to the target class), *shifted* "
          "(it now sends them to another class), *neutralised*.", "",
          table_markdown(rows), table_extras_markdown(rows), paper_comparison(rows), extra_md]
    if figures and figure_cost(rows, out / "figures" / "delta_pacc_vs_cost"):
        md.append("![ΔPACC against CPU cost](figures/delta_pacc_vs_cost.png)\n")
    cells = defaultdict(dict)
    for r in results:
        cells[(r["dataset"], r["attack"], r["seed"])][r["method"]] = r
    for (dataset, attack, seed), cell in sorted(cells.items(), key=lambda kv: (_dataset_rank(kv[0][0]), *kv[0][1:])):
        fig_dir = out / "figures" / f"{dataset}-{attack}-seed{seed}"
        labels = cell[next(iter(cell))]["poison_meta"]["label_names"]
        md += [f"## {dataset} / {attack} / seed {seed}", ""]
        md.append(verdict_sentences(cell, split))
        md.append(curve_table(cell, split))
        if not figures:
            continue
        _, paths = figure_confusions(cell, labels, fig_dir / "confusion", split)
        md.append(f"![confusion matrices]({paths[0].relative_to(out)})\n")
        if any(len(cell.get(m, {}).get("curve", [])) > 1 for m in ("ga", "npo", "rga")):
            _, paths = figure_shift_dynamics(cell, fig_dir / "shift_dynamics", split)
            md.append(f"![PACC and shift gap per epoch]({paths[0].relative_to(out)})\n")
        if any(m in cell for m in ("ga", "npo", "rga")):
            _, paths = figure_poisoned_loss(cell, fig_dir / "poisoned_loss", log_scale)
            md.append(f"![poisoned loss]({paths[0].relative_to(out)})\n")
        for m in ("ga", "npo", "rga"):
            if m in cell:
                _, paths = figure_training_dynamics(cell[m], fig_dir / f"dynamics_{m}", split)
                md.append(f"![{m} dynamics]({paths[0].relative_to(out)})\n")
        if "rga" in cell:
            _, paths = figure_lambda(cell["rga"], fig_dir / "rga_lambda")
            md.append(f"![rga lambda]({paths[0].relative_to(out)})\n")
    atomic_write_text(out / "report.md", "\n".join(md))
    return out / "report.md"


def curve_table(cell: dict, split: str = "test") -> str:
    """Metrics at every evaluated unlearning epoch, with the poisoned model as epoch 0."""
    lines = ["| method | epoch | CACC | LFR | PACC | shift gap | triggered confusion |", "|---|---|---|---|---|---|---|"]

    def row(name, epoch, m):
        lines.append(f"| {name} | {epoch} | {m['cacc']:.2f} | {m['lfr']:.2f} | {m['pacc']:.2f} | "
                     f"{m['target_shift_gap']:+.2f} | {m['confusion_triggered']} |")

    for key, epoch in (("victim", 0), ("retrain", "–")):
        if split in cell.get(key, {}).get("metrics", {}):
            row(METHOD_NAMES[key], epoch, cell[key]["metrics"][split])
    for m in ("ga", "npo", "rga"):
        for point in cell.get(m, {}).get("curve", []):
            if split in point:
                row(METHOD_NAMES[m], point["epoch"], point[split])
        if cell.get(m, {}).get("unlearn_seconds") is not None:
            lines.append(f"| {METHOD_NAMES[m]} wall time | {cell[m]['unlearn_seconds']:.0f} s | | | | | |")
    return "\n".join(lines) + "\n"


def verdict_sentences(cell: dict, split: str) -> str:
    """One line per unlearning method of a cell: the verdict against ReTrain (verdict.decide)."""
    from .verdict import decide

    ref = cell.get("retrain", {}).get("metrics", {}).get(split)
    lines = []
    for m, res in cell.items():
        if m in REFERENCES or split not in res["metrics"]:
            continue
        meta = res["poison_meta"]
        v = decide(res["metrics"][split], ref, meta["target"], meta["label_names"])
        lines.append(f"- **{METHOD_NAMES.get(m, m)}**: {v.message}")
    return "\n".join(lines) + "\n" if lines else ""
