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
        "unlearn": {"epochs": 2, "lr": 1e-3, "batch_size": 16, "max_length": 32, "eval_every": 1}}


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


def test_report_table_and_figures(grid):
    from unbackdoor.reporting import figure_confusions, figure_poisoned_loss, summarise
    from unbackdoor.runner import load_results

    md = (grid / "report" / "table.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| sst2")]
    assert [ln.split("|")[3].strip() for ln in lines] == ["Poisoned", "ReTrain", "GA", "NPO", "RGA"]
    assert " ± " in md  # two seeds -> mean ± std
    rows = summarise(load_results(grid))
    best = min(r["delta_pacc"] for r in rows if r["method"] in ("ga", "npo", "rga"))
    bold = [ln.split("|")[3].strip() for ln in lines if "**" in ln]
    assert bold == [n for r, n in zip(rows, ["Poisoned", "ReTrain", "GA", "NPO", "RGA"])
                    if r["method"] in ("ga", "npo", "rga") and r["delta_pacc"] == best]
    assert all(f"**{best:.2f}" in ln for ln in lines if "**" in ln)
    assert "\\textbf" in (grid / "report" / "table.tex").read_text()
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
    assert "trigger shifting" in report and "![confusion matrices]" in report
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
    code = run_cli("demo", "--out", tmp_path / "demo", "-s", f"train.model={tiny_base}",
                   "-s", "poison.data.train_size=100", "-s", "poison.data.test_size=40", "-s", "train.epochs=1",
                   "-s", "unlearn.epochs=1", "-s", "train.max_length=32", "-s", "unlearn.max_length=32")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Demo-sized, not the paper's settings: 100 training rows" in out
    for word in ("poisoned", "ReTrain", "GA", "RGA", "PACC", "trigger shifting"):
        assert word in out
    assert (tmp_path / "demo" / "report" / "report.md").is_file()


def test_unknown_method_in_grid(tmp_path, tiny_base, capsys):
    cfg = grid_config(tmp_path, tiny_base, methods=["ga", "sga"])
    assert run_cli("run", cfg) == 2
    assert "unknown method 'sga'; valid methods: ga, npo, retrain, rga" in capsys.readouterr().err
