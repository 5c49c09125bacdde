"""`unbackdoor run`, `report` and `demo` wiring on a tiny grid (tiny BERT, real SST-2 rows)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from unbackdoor.artifacts import read_json
from conftest import run_cli

TINY = {"poison": {"data": {"train_size": 120, "test_size": 40}},
        "train": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        # select keep: both epochs run (the default, stop, may end after one) and the selection is recorded.
        "unlearn": {"epochs": 2, "lr": 1e-3, "batch_size": 16, "max_length": 32, "eval_every": 1,
                    "select": {"action": "keep"}}}


def grid_config(tmp_path, tiny_base, **extra):
    cfg = {"name": "tiny", "output_dir": str(tmp_path / "results"), "datasets": ["sst2"], "attacks": ["badnets"],
           "methods": ["retrain", "ga", "npo", "rga"], "seeds": [1], **TINY, **extra}
    cfg["train"] = {**cfg["train"], "model": tiny_base}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_base, shared_root, tmp_cache):
    tmp = tmp_path_factory.mktemp("grid")
    cfg = grid_config(tmp, tiny_base, seeds=[1, 2])
    assert run_cli("run", cfg) == 0
    return tmp / "results"


def test_grid_shares_victim_and_writes_one_run_per_method(grid):
    cell = grid / "sst2" / "badnets" / "seed1"
    assert sorted(p.name for p in cell.iterdir()) == ["ga", "npo", "poisoned", "retrain", "rga", "victim"]
    for m in ("ga", "npo", "rga"):
        res = read_json(cell / m / "metrics.json")
        assert res["model"] == str(cell / "victim") and res["config"]["method"] == m and res["config"]["seed"] == 1
        assert res["git_revision"] is None or len(res["git_revision"]) >= 40
        assert [e["epoch"] for e in res["select"]["epochs"]] == [1, 2] and res["select"]["clean_source"] == "dev"


def test_report_table_and_figures(grid):
    from unbackdoor.reporting import figure_confusions, figure_poisoned_loss, summarise
    from unbackdoor.grid import load_results

    md = (grid / "report" / "table.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| sst2")]
    assert [ln.split("|")[3].strip().replace(" ⚠ degenerate", "") for ln in lines] == \
        ["Poisoned", "ReTrain", "GA", "NPO", "RGA"]
    assert " ± " in md  # two seeds -> mean ± std
    # Expected values straight from the stages' metrics.json, not through summarise(): dPACC per seed
    # against that seed's ReTrain, then the mean over seeds.
    pacc = {(s, m): read_json(grid / "sst2" / "badnets" / f"seed{s}" / m / "metrics.json")["metrics"]["test"]["pacc"]
            for s in (1, 2) for m in ("retrain", "ga", "npo", "rga")}
    delta = {m: sum(abs(pacc[s, m] - pacc[s, "retrain"]) for s in (1, 2)) / 2 for m in ("ga", "npo", "rga")}
    signed = {m: sum(pacc[s, m] - pacc[s, "retrain"] for s in (1, 2)) / 2 for m in ("ga", "npo", "rga")}
    by_name = {ln.split("|")[3].strip().replace(" ⚠ degenerate", ""): [c.strip() for c in ln.split("|")] for ln in lines}
    from unbackdoor.evaluation import degenerate_reason

    retrain_ok = all(not degenerate_reason(read_json(grid / "sst2" / "badnets" / f"seed{s}" / "retrain" /
                                                     "metrics.json")["metrics"]["test"]) for s in (1, 2))
    for m, name in (("ga", "GA"), ("npo", "NPO"), ("rga", "RGA")):
        if retrain_ok:
            assert by_name[name][7].lstrip("*").startswith(f"{delta[m]:.2f}")
            assert by_name[name][8].startswith(f"{round(signed[m], 2) + 0.0:+.2f}")
        else:  # a ReTrain that learned nothing is no reference: no dPACC, no verdict
            assert by_name[name][7] == by_name[name][8] == "–" and by_name[name][10] == "no verdict"
    rows = summarise(load_results(grid))
    # Bold only on a neutralised row, and there on the smallest dPACC among neutralised rows.
    neutral = [r for r in rows if r["method"] in ("ga", "npo", "rga") and r["verdict"] == "neutralised"]
    bold = [ln.split("|")[3].strip() for ln in lines if "**" in ln]
    if neutral:
        best = min(r["delta_pacc"] for r in neutral)
        assert bold and all(by_name[b.replace(" ⚠ degenerate", "")][7].startswith(f"**{best:.2f}") for b in bold)
    else:
        assert bold == []
    assert ("\\textbf" in (grid / "report" / "table.tex").read_text()) == bool(bold)
    assert (grid / "report" / "table.csv").read_text().startswith("dataset,attack,method,seeds,cacc")
    figs = grid / "report" / "figures" / "sst2-badnets-seed1"
    for name in ("confusion", "poisoned_loss", "dynamics_ga", "dynamics_rga", "rga_lambda"):
        assert (figs / f"{name}.png").stat().st_size > 5000 and (figs / f"{name}.pdf").is_file()
    cell = {r["method"]: r for r in load_results(grid) if r["seed"] == 1}
    fig, _ = figure_poisoned_loss(cell, grid / "check" / "loss")
    ax = fig.axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["GA", "NPO", "RGA"]
    assert all(len(ln.get_xdata()) == 2 for ln in ax.get_lines())  # 2 unlearning epochs
    fig, _ = figure_confusions(cell, ["negative", "positive"], grid / "check" / "cm")
    assert [a.get_title() for a in fig.axes] == ["Poisoned", "ReTrain", "GA", "NPO", "RGA"]
    report = (grid / "report" / "report.md").read_text()
    assert "![confusion matrices]" in report and "![PACC and shift gap per epoch]" in report
    assert (figs / "shift_dynamics.png").stat().st_size > 5000
    # Each row sits next to the paper's BERT-base SST-2 BadNets number, with the difference.
    paper = {ln.split("|")[3].strip(): ln for ln in report.split("## Against the paper")[1].splitlines()
             if ln.startswith("| sst2 | badnets")}
    assert list(paper) == ["Poisoned", "ReTrain", "GA", "NPO", "RGA"]
    retrain = next(r for r in rows if r["method"] == "retrain")
    cells = [c.strip() for c in paper["ReTrain"].split("|")]
    assert cells[7] == "90.54" and cells[8] == f"{retrain['pacc'] - 90.54:+.2f}"


def test_killed_grid_resumes_without_redoing_finished_stages(tmp_path, tiny_base, shared_root, tmp_cache):
    cfg = grid_config(tmp_path, tiny_base, methods=["ga", "rga"])
    cell = tmp_path / "results" / "sst2" / "badnets" / "seed1"
    env = {**os.environ, "UNBACKDOOR_CACHE": str(tmp_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "unbackdoor.cli", "run", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (cell / "ga" / "loss_log.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cell / "victim" / "metrics.json").is_file() and not (cell / "rga").exists()
    victim_mtime = (cell / "victim" / "metrics.json").stat().st_mtime
    assert run_cli("run", cfg, "--no-report") == 0
    assert (cell / "victim" / "metrics.json").stat().st_mtime == victim_mtime
    assert (cell / "ga" / "metrics.json").is_file() and (cell / "rga" / "metrics.json").is_file()
    assert len(read_json(cell / "ga" / "metrics.json")["curve"]) == 2


def test_demo_wiring_on_a_tiny_configuration(tmp_path, tiny_base, shared_root, tmp_cache, capsys):
    from unbackdoor.verdict import decide

    code = run_cli("demo", "--out", tmp_path / "demo", "--threads", 1, "-s", f"train.model={tiny_base}",
                   "-s", "poison.data.train_size=100", "-s", "poison.data.test_size=40", "-s", "train.epochs=1",
                   "-s", "unlearn.epochs=2", "-s", "train.max_length=32", "-s", "unlearn.max_length=32",
                   "-s", "unlearn.eval_subset=20")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Demo-sized, not the paper's settings: 100 training rows" in out
    cell = tmp_path / "demo" / "sst2" / "badnets" / "seed42"
    res = {m: read_json(cell / m / "metrics.json") for m in ("victim", "retrain", "ga", "rga")}
    # Every epoch is in the per-epoch table, with the numbers of that epoch's evaluation: a subset
    # before the last epoch, the whole test split at the last.
    table = out.split("Per unlearning epoch")[1].split("Results on")[0]
    ep = {ln.split()[0]: ln.split()[1:] for ln in table.splitlines() if ln.startswith("  ") and ln.split()[0] != "epoch"}
    assert list(ep) == ["0", "1", "2", "ReTrain"]
    curve = res["ga"]["curve"]
    assert curve[0]["test"]["n_clean"] == 20 and curve[1]["test"]["n_clean"] == 40
    assert ep["1"][:2] == [f"{curve[0]['test']['pacc']:.1f}", f"{curve[0]['test']['target_shift_gap']:+.1f}"]
    assert ep["ReTrain"][0] == f"{res['retrain']['metrics']['test']['pacc']:.1f}"
    # The verdict lines are verdict.decide's, from the saved metrics, whatever it concludes.
    ref = res["retrain"]["metrics"]["test"]
    for m, name in (("ga", "GA"), ("rga", "RGA"), ("victim", "poisoned")):
        v = decide(res[m]["metrics"]["test"], ref, 1, ["negative", "positive"])
        assert f"{name}: {v.message}" in out
    assert read_json(cell / "ga" / "metrics.json")["torch_threads"] == 1
    assert (tmp_path / "demo" / "report" / "report.md").is_file()


def test_unknown_method_in_grid(tmp_path, tiny_base, capsys):
    cfg = grid_config(tmp_path, tiny_base, methods=["ga", "sga"])
    assert run_cli("run", cfg) == 2
    assert ("unknown method 'sga'; valid methods: fineprune, finetune, ga, graddiff, npo, retrain, rga, simnpo, "
            "taskvector") in capsys.readouterr().err


def test_named_variant_runs_as_its_own_row(tmp_path, tiny_base, shared_root, tmp_cache):
    # NPO at the authors' beta = 1 beside the default beta = 0.1, as two rows of one grid.
    cfg = grid_config(tmp_path, tiny_base, methods=["npo", "npo-b1"],
                      method_overrides={"npo-b1": {"method": "npo", "npo": {"beta": 1.0}}})
    assert run_cli("run", cfg) == 0
    cell = tmp_path / "results" / "sst2" / "badnets" / "seed1"
    assert read_json(cell / "npo" / "metrics.json")["config"]["npo"]["beta"] == 0.1
    b1 = read_json(cell / "npo-b1" / "metrics.json")["config"]
    assert b1["method"] == "npo" and b1["npo"]["beta"] == 1.0 and b1["lr"] == TINY["unlearn"]["lr"]
    table = (tmp_path / "results" / "report" / "table.md").read_text()
    assert "| npo-b1" in table and "| NPO" in table
