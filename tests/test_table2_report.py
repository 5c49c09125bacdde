"""`unbackdoor report DIR1 DIR2 ...`: one Table 2 over result folders of several datasets, on synthetic
stages shaped like a grid's (metrics.json from known confusion matrices, so every number is known)."""

import csv
import shutil

import pytest

from conftest import run_cli
from unbackdoor.artifacts import write_json, write_jsonl
from unbackdoor.evaluation import compute_metrics

LABELS = {"sst2": ["negative", "positive"], "hsol": ["non-hate", "hate"],
          "agnews": ["World", "Sports", "Business", "Sci/Tech"]}
TARGET = {"sst2": 1, "hsol": 0, "agnews": 0}
PAPER = ("replace", 0.5, None)
AUTHORS_AG = ("add", 0.1, "/data/rga_reference/HiddenKiller/AG/train_poisoned.csv")

BIN_CLEAN = [[45, 5], [5, 45]]
BIN = {"victim": [[0, 50], [0, 50]], "retrain": [[40, 10], [10, 40]], "ga": [[50, 0], [50, 0]],
       "rga": [[42, 8], [12, 38]], "rga82": [[44, 6], [12, 38]], "rga60": [[30, 20], [20, 30]],
       "npo-b1": [[45, 5], [25, 25]]}
AG_CLEAN = [[18, 1, 1, 0], [1, 9, 0, 0], [0, 1, 19, 0], [0, 0, 1, 29]]
AG = {"retrain": [[20, 0, 0, 0], [0, 10, 0, 0], [0, 0, 20, 0], [0, 0, 0, 30]],
      # Non-target classes of unequal size: 5 of the 10 Sports rows go to World, none of the 50 others, so
      # LFR pooled = 5/60 = 8.33 and the authors' class mean = (50 + 0 + 0) / 3 = 16.67. PACC = 73/80.
      "rga": [[18, 1, 1, 0], [5, 5, 0, 0], [0, 0, 20, 0], [0, 0, 0, 30]],
      "ga": [[0, 20, 0, 0], [0, 10, 0, 0], [0, 0, 20, 0], [0, 0, 0, 30]]}


def _pairs(cm):
    true, pred = [], []
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            true += [i] * n
            pred += [j] * n
    return true, pred


def stage(root, dataset, attack, seed, method, trig_cm, setting=PAPER, objective=None, history=None, probes=None):
    mode, rate, file = setting
    names, target = LABELS[dataset], TARGET[dataset]
    clean = AG_CLEAN if dataset == "agnews" else BIN_CLEAN
    metrics = compute_metrics(*_pairs(clean), *_pairs(trig_cm), target, names)
    how = {"source": "file" if file else "attack", "mode": mode, "rate": rate, **({"file": file} if file else {})}
    meta = {"dataset": dataset, "label_names": names, "target": target, "rate": rate, "mode": mode, "poisoning": how}
    d = root / dataset / attack / f"seed{seed}" / method
    d.mkdir(parents=True)
    res = {"kind": method, "metrics": {"test": metrics}, "curve": [], "poison_meta": meta,
           **({"history": history} if history else {})}
    if probes:
        write_json(d / "probes.json", {"config": {}, "metrics": {"test": probes}})
    if method not in ("victim", "retrain"):
        res["config"] = {"method": objective or method}
        write_jsonl(d / "loss_log.jsonl", [{"epoch": e, "step": e, "ce_p": 1.0 * e, "ce_c": 0.1, "lambda": 0.5 / e}
                                           for e in (1, 2)])
    write_json(d / "metrics.json", res)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2")
    sst, hsol, ag, other = root / "sst2-runs", root / "hsol-runs", root / "ag-runs", root / "sst2-add"
    for m in ("victim", "retrain", "ga", "rga", "npo-b1"):
        stage(sst, "sst2", "badnets", 1, m, BIN[m], objective="npo" if m == "npo-b1" else None)
    for m, cm in (("retrain", BIN["retrain"]), ("ga", BIN["ga"]), ("rga", BIN["rga82"])):
        stage(sst, "sst2", "badnets", 2, m, cm)
    # The same dataset and attack poisoned otherwise (10% add): its own rows, never averaged with the above.
    stage(other, "sst2", "badnets", 3, "retrain", BIN["retrain"], ("add", 0.1, None))
    stage(other, "sst2", "badnets", 3, "rga", BIN["rga60"], ("add", 0.1, None))
    for m in ("retrain", "rga"):
        stage(hsol, "hsol", "badnets", 1, m, [row[::-1] for row in BIN[m][::-1]])  # target 0: classes swapped
        stage(ag, "agnews", "hiddenkiller", 1, m, AG[m], AUTHORS_AG)
    for m in ("retrain", "ga"):
        stage(ag, "agnews", "badnets", 1, m, AG[m])
    return root, [ag, sst, other, hsol]  # not in the paper's order


@pytest.fixture(scope="module")
def report(folders):
    root, dirs = folders
    out = root / "table2"
    assert run_cli("report", *dirs, "--out", out) == 0
    return out


def _table_rows(md: str, dataset: str) -> dict[tuple[str, str], list[str]]:
    return {(c[2], c[3]): c for c in ([x.strip() for x in ln.split("|")] for ln in md.splitlines()
                                      if ln.startswith(f"| {dataset} |"))}


def test_csv_one_row_per_dataset_attack_setting_method_in_the_papers_order(report):
    rows = list(csv.DictReader((report / "table.csv").open()))
    assert [(r["dataset"], r["attack"], r["method"], r["poisoning"]) for r in rows] == [
        ("sst2", "badnets", "retrain", "add 10%"), ("sst2", "badnets", "rga", "add 10%"),
        ("sst2", "badnets", "victim", "replace 50%"), ("sst2", "badnets", "retrain", "replace 50%"),
        ("sst2", "badnets", "ga", "replace 50%"), ("sst2", "badnets", "rga", "replace 50%"),
        ("sst2", "badnets", "npo-b1", "replace 50%"),
        ("hsol", "badnets", "retrain", "replace 50%"), ("hsol", "badnets", "rga", "replace 50%"),
        ("agnews", "badnets", "retrain", "replace 50%"), ("agnews", "badnets", "ga", "replace 50%"),
        ("agnews", "hiddenkiller", "retrain", "add 10%, imported train_poisoned.csv"),
        ("agnews", "hiddenkiller", "rga", "add 10%, imported train_poisoned.csv")]
    by = {(r["dataset"], r["attack"], r["method"], r["poisoning"]): r for r in rows}
    rga = by["sst2", "badnets", "rga", "replace 50%"]
    # Seeds 1 and 2: PACC 80 and 82 against ReTrain's 80 and 80.
    assert (rga["seeds"], float(rga["pacc"]), float(rga["delta_pacc"])) == ("2", 81.0, 1.0)
    # Seed 3 (10% add) only against its own ReTrain: PACC 60 vs 80.
    assert float(by["sst2", "badnets", "rga", "add 10%"]["delta_pacc"]) == 20.0
    ag = by["agnews", "hiddenkiller", "rga", "add 10%, imported train_poisoned.csv"]
    assert float(ag["lfr"]) == pytest.approx(100 * 5 / 60) and float(ag["lfr_macro"]) == pytest.approx(100 * 0.5 / 3)
    assert float(ag["pacc"]) == pytest.approx(91.25) and float(ag["delta_pacc"]) == pytest.approx(8.75)


def test_table2_blocks_with_the_papers_numbers_beside_ours(report):
    md = (report / "report.md").read_text()
    paper = md.split("## Against the paper")[1].split("\n## ")[0]
    heads = [paper.index(f"### {n}") for n in ("SST-2", "HSOL", "AG News")]
    assert heads == sorted(heads)
    sst_block, ag_block = paper[heads[0]:heads[1]], paper[heads[2]:]
    assert "class mean" not in sst_block and "| LFR (pooled) | LFR (class mean) | paper LFR |" in ag_block
    ag = _table_rows(ag_block, "agnews")
    assert ag["hiddenkiller (add 10%, imported train_poisoned.csv)", "RGA"][4:11] == \
        ["8.33", "16.67", "8.00", "91.25", "80.13", "+11.12", "8.75"]
    assert ag["badnets", "GA"][8] == "60.13"  # the paper's AG BadNets GA PACC, unmarked attack
    sst = _table_rows(sst_block, "sst2")
    # npo-b1 runs NPO: beside the paper's NPO (74.24). Our PACC 70.00 over one seed.
    assert sst["badnets", "npo-b1"][6:9] == ["70.00", "74.24", "-4.24"]
    assert sst["badnets (add 10%)", "RGA"][6:10] == ["60.00", "90.34", "-30.34", "20.00"]
    assert sst["badnets", "RGA"][6:10] == ["81.00 ± 1.41", "90.34", "-9.34", "1.00 ± 1.41"]
    table = (report / "table.md").read_text()
    assert [table.index(f"### {n}") for n in ("SST-2", "HSOL", "AG News")] == \
        sorted(table.index(f"### {n}") for n in ("SST-2", "HSOL", "AG News"))
    assert "LFR (class mean)" not in table.split("### HSOL")[0] and "LFR (class mean)" in table.split("### AG News")[1]
    assert "& hiddenkiller (add 10\\%, imported train\\_poisoned.csv) & RGA &" in (report / "table.tex").read_text()
    assert (report / "figures" / "agnews-hiddenkiller-seed1" / "confusion.png").is_file()


def test_a_stage_in_two_folders_and_several_folders_without_out(folders, tmp_path, capsys):
    root, dirs = folders
    copy = tmp_path / "copy"
    shutil.copytree(dirs[1] / "sst2" / "badnets" / "seed2", copy / "sst2" / "badnets" / "seed2")
    assert run_cli("report", dirs[1], copy, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "sst2/badnets/seed2/ga is in two results folders" in err and str(dirs[1]) in err and str(copy) in err
    assert not (tmp_path / "r").exists()
    assert run_cli("report", dirs[0], dirs[1]) == 2
    assert "--out is required with several results folders" in capsys.readouterr().err


# ---------------------------------------------------------------- cost, relearning and trigger variants

def test_training_cost_leaves_out_the_evaluations_before_the_last_epoch():
    from unbackdoor.reporting import training_cost

    # The loop's clocks at epoch 2 ran through epoch 1's evaluation (2 s, 3 CPU s), not epoch 2's.
    history = [{"epoch": 1, "seconds": 10.0, "cpu_seconds": 19.0, "eval_seconds": 2.0, "eval_cpu_seconds": 3.0},
               {"epoch": 2, "seconds": 25.0, "cpu_seconds": 50.0, "eval_seconds": 7.0, "eval_cpu_seconds": 9.0}]
    assert training_cost({"history": history}) == (23.0, 47.0)
    # A run made before CPU time was recorded: its wall time, and no CPU figure rather than a guess.
    assert training_cost({"history": [{"epoch": 3, "seconds": 30.0}]}) == (30.0, None)
    assert training_cost({}) == (None, None)


def _clock(wall, cpu, evals=0.0):
    return [{"epoch": 1, "seconds": wall / 2, "cpu_seconds": cpu / 2, "eval_seconds": evals, "eval_cpu_seconds": evals},
            {"epoch": 2, "seconds": wall + evals, "cpu_seconds": cpu + evals}]


def test_cost_relearning_and_variants_in_the_table_report_and_figure(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    relearned = {"relearn_lfr_16": 70.0, "retrain_relearn_lfr_16": 20.0, "relearn_lfr_excess_16": 50.0,
                 "relearn_cacc_16": 88.0, "relearn_lr": 1e-4,
                 "trigger_variants": {"start": {"lfr": 30.0}, "other_word": {"lfr": 12.0}}}
    stage(runs, "sst2", "badnets", 1, "retrain", BIN["retrain"], history=_clock(100, 200),
          probes={"relearn_lfr_16": 20.0, "relearn_lr": 1e-4, "trigger_variants": {"start": {"lfr": 10.0}}})
    stage(runs, "sst2", "badnets", 1, "ga", BIN["ga"], history=_clock(30, 50, evals=5.0))
    stage(runs, "sst2", "badnets", 1, "rga", BIN["rga"], history=_clock(40, 80, evals=5.0), probes=relearned)
    assert run_cli("report", runs, "--out", out) == 0
    by = {r["method"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert float(by["ga"]["cpu_s"]) == 50.0 and float(by["ga"]["cpu_vs_retrain"]) == 0.25
    assert float(by["rga"]["cpu_vs_retrain"]) == 0.4 and float(by["retrain"]["cpu_vs_retrain"]) == 1.0
    assert float(by["rga"]["relearn_lfr_excess_16"]) == 50.0 and float(by["rga"]["variant_lfr_start"]) == 30.0
    assert by["ga"]["relearn_lfr_16"] == ""  # GA was not probed: no number rather than a zero
    md = (out / "report.md").read_text()
    extras = md.split("## Cost, relearning and trigger variants")[1].split("\n## ")[0]
    rows = _table_rows(extras, "sst2")
    assert rows["badnets", "GA"][4:7] == ["30", "50", "0.25×"]
    assert rows["badnets", "RGA"][7:] == ["70.00", "+50.00", "12.00", "30.00", ""]
    assert (out / "figures" / "delta_pacc_vs_cost.png").is_file() and "delta_pacc_vs_cost.png" in md


def test_no_cost_or_probe_section_for_runs_that_measured_neither(report):
    # The module's folders carry no CPU clock and no probes.json: nothing is shown rather than empty columns.
    md = (report / "report.md").read_text()
    assert "## Cost, relearning" not in md and not (report / "figures" / "delta_pacc_vs_cost.png").exists()
    assert not {"cpu_s", "cpu_vs_retrain"} & set(next(csv.reader((report / "table.csv").open())))


def test_no_figures_writes_the_same_tables_and_text_without_any_figure(folders, report, tmp_path):
    _, dirs = folders
    out = tmp_path / "plain"
    assert run_cli("report", *dirs, "--out", out, "--no-figures") == 0
    assert not (out / "figures").exists() and "![" not in (out / "report.md").read_text()
    for name in ("table.csv", "table.md", "table.tex"):
        assert (out / name).read_text() == (report / name).read_text()
    # The text is the figured report's, line for line, without its image lines.
    drawn = [ln for ln in (report / "report.md").read_text().splitlines() if ln and not ln.startswith("![")]
    assert [ln for ln in (out / "report.md").read_text().splitlines() if ln] == drawn
    assert (report / "figures").is_dir()  # the module's report, with figures, for contrast
