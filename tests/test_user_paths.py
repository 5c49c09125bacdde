"""`unbackdoor run` on a user's own files, and what it must refuse, with the model stages stubbed out
(poisoning is real): only the grid's bookkeeping is under test here."""

from pathlib import Path

import pytest
import yaml

from conftest import run_cli, write_tsv
from unbackdoor.artifacts import read_json, read_jsonl, write_json, write_jsonl
from unbackdoor.evaluation import compute_metrics


def user_tsv(path: Path, n=40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tsv(path, [(f"user sentence {i} about thing {i % 7}", "pos" if i % 2 else "neg") for i in range(n)])


def grid(tmp_path, datasets, **extra) -> Path:
    cfg = {"output_dir": str(tmp_path / "results"), "datasets": datasets, "attacks": ["badnets"], "methods": ["ga"],
           "seeds": [1], "poison": {"data": {"test_file": str(user_tsv(tmp_path / "test.tsv", 20)), "target": "pos"}},
           **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


GOOD = compute_metrics([0, 1] * 10, [0, 1] * 10, [0, 1] * 10, [0, 1] * 10, 1, ["neg", "pos"])
ALL_POS = compute_metrics([0, 1] * 10, [1] * 20, [0, 1] * 10, [1] * 20, 1, ["neg", "pos"])


@pytest.fixture
def stages(monkeypatch):
    """Stub train/unlearn/detect that write what the real ones leave behind; returns the calls made."""
    import unbackdoor.stages as pipeline

    calls = []

    def train(poisoned, cfg, out, clean_only=False, **kw):
        calls.append(("retrain" if clean_only else "victim", Path(out)))
        write_json(Path(out) / "metrics.json", {"metrics": {"test": ALL_POS if clean_only else GOOD}})

    def unlearn(model, source, cfg, out, **kw):
        calls.append(("unlearn", Path(out)))
        write_json(Path(out) / "metrics.json", {"metrics": {"test": GOOD}})

    def detect(model, poisoned, cfg, out):
        calls.append(("detect", Path(out)))
        rows = read_jsonl(Path(poisoned) / "train.jsonl")
        write_jsonl(out, [{"text": r["text"], "label": r["label"], "poisoned": int(r["poisoned"])} for r in rows])
        write_json(Path(out).with_suffix(".metrics.json"), {"config": cfg.model_dump()})

    monkeypatch.setattr(pipeline, "run_train", train)
    monkeypatch.setattr(pipeline, "run_unlearn", unlearn)
    monkeypatch.setattr(pipeline, "run_detect", detect)
    return calls


def test_grid_over_user_files_writes_only_under_output_dir(tmp_path, monkeypatch, stages):
    from unbackdoor.grid import load_results

    monkeypatch.chdir(tmp_path)
    rel = user_tsv(tmp_path / "data" / "train.tsv")
    other = user_tsv(tmp_path / "other" / "train.tsv")  # the same stem
    assert run_cli("run", grid(tmp_path, ["data/train.tsv", str(other)]), "--no-report") == 0
    assert [p.name for p in rel.parent.iterdir()] == ["train.tsv"]
    assert [p.name for p in other.parent.iterdir()] == ["train.tsv"]
    res = tmp_path / "results"
    dirs = {"train": str(rel.resolve()), "train-2": str(other)}
    assert read_json(res / "experiment.json")["dataset_dirs"] == dirs
    assert read_json(res / "train" / "badnets" / "seed1" / "poisoned" / "meta.json")["counts"]["train"] == 40
    assert sorted((r["dataset"], r["method"]) for r in load_results(res)) == [
        ("train", "ga"), ("train", "victim"), ("train-2", "ga"), ("train-2", "victim")]
    # Listed the other way round, each file keeps its folder and its finished stages.
    stages.clear()
    assert run_cli("run", grid(tmp_path, [str(other), str(rel)]), "--no-report") == 0
    assert stages == [] and read_json(res / "experiment.json")["dataset_dirs"] == dirs


def test_changed_detect_settings_are_refused_not_reused(tmp_path, stages, capsys):
    data = str(user_tsv(tmp_path / "train.tsv"))
    assert run_cli("run", grid(tmp_path, [data], detectors=["loss"], detect={"fraction": 0.2}), "--no-report") == 0
    assert ("detect", tmp_path / "results/train/badnets/seed1/detect-loss/flags.jsonl") in stages
    stages.clear()
    capsys.readouterr()
    assert run_cli("run", grid(tmp_path, [data], detectors=["loss"], detect={"fraction": 0.3}), "--no-report") == 2
    err = capsys.readouterr().err
    assert "detector flags or subsets made with other settings" in err and "detect-loss" in err, err
    assert stages == []
    # Other settings, or a new detector with the same ones, reuse nothing stale: allowed.
    assert run_cli("run", grid(tmp_path, [data], detectors=["loss", "cube"], detect={"fraction": 0.2}),
                   "--no-report") == 0
    assert [c[0] for c in stages] == ["detect", "unlearn"]


def test_a_fraction_that_rounds_to_an_existing_subset_is_refused(tmp_path, stages, capsys):
    data = str(user_tsv(tmp_path / "train.tsv"))
    assert run_cli("run", grid(tmp_path, [data], poisoned_fractions=[0.5]), "--no-report") == 0
    assert run_cli("run", grid(tmp_path, [data], poisoned_fractions=[0.504]), "--no-report") == 2
    assert "subset-gt50" in capsys.readouterr().err


def test_a_new_option_does_not_make_old_results_another_experiment(tmp_path, stages):
    data = str(user_tsv(tmp_path / "train.tsv"))
    cfg = grid(tmp_path, [data])
    assert run_cli("run", cfg, "--no-report") == 0
    exp = tmp_path / "results" / "experiment.json"
    old = read_json(exp)
    del old["train"]["class_weights"]  # as written before the option existed
    write_json(exp, old)
    assert run_cli("run", cfg, "--no-report") == 0


def test_eval_splits_typo_is_refused_with_a_suggestion(tmp_path, capsys):
    assert run_cli("run", grid(tmp_path, ["sst2"], eval_splits=["tset"])) == 2
    assert "eval_splits: unknown split 'tset'; did you mean 'test'?" in capsys.readouterr().err


def test_run_warns_loudly_about_a_degenerate_stage(tmp_path, stages, capsys):
    data = str(user_tsv(tmp_path / "train.tsv"))
    assert run_cli("run", grid(tmp_path, [data], methods=["retrain", "ga"]), "--no-report") == 0
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if "WARNING" in ln]
    assert warnings == ["[train/badnets/seed1] WARNING: the retrain model is degenerate on test: predicts class "
                        "'pos' for 100.0% of the clean rows"]


def test_report_split_dev_draws_the_dev_confusions(tmp_path, monkeypatch):
    import unbackdoor.reporting as reporting

    dev = compute_metrics([0, 1] * 10, [0] * 20, [0, 1] * 10, [0] * 20, 1, ["neg", "pos"])
    for method in ("victim", "retrain"):
        write_json(tmp_path / "sst2" / "badnets" / "seed1" / method / "metrics.json",
                   {"metrics": {"test": GOOD, "dev": dev},
                    "poison_meta": {"label_names": ["neg", "pos"], "target": 1}})
    drawn = []
    real = reporting.figure_confusions

    def spy(cell, labels, path, split="test"):
        drawn.append([cell[m]["metrics"][split]["confusion_triggered"] for m in ("victim", "retrain")])
        return real(cell, labels, path, split)

    monkeypatch.setattr(reporting, "figure_confusions", spy)
    assert run_cli("report", tmp_path, "--split", "dev") == 0
    assert drawn == [[dev["confusion_triggered"]] * 2]


@pytest.mark.parametrize("command", ["train", "unlearn"])
def test_class_weights_option_is_generated(command):
    from unbackdoor.cli import cli

    opt = next(p for p in cli.commands[command].params if "--class-weights" in p.opts)
    assert list(opt.type.choices) == ["none", "balanced"]


def test_train_with_balanced_class_weights_weights_its_loss(tmp_path, monkeypatch, tiny_base, tmp_cache):
    import unbackdoor.stages as pipeline
    from unbackdoor.config import PoisonConfig, TrainConfig

    data = user_tsv(tmp_path / "train.tsv", 20)
    imbalanced = write_tsv(tmp_path / "imb.tsv", [(f"row {i} text", "neg" if i < 18 else "pos") for i in range(20)])
    pipeline.run_poison(PoisonConfig(data={"dataset": str(imbalanced), "test_file": str(data), "target": "pos"},
                                     attack={"rate": 0.5}), tmp_path / "p")
    seen = []

    def loop(model, tok, objective, *a, **kw):
        seen.append(objective.class_weight)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(pipeline, "train_loop", loop)
    for mode in ("none", "balanced"):
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_train(tmp_path / "p", TrainConfig(model=tiny_base, class_weights=mode), tmp_path / mode)
    labels = [r["label"] for r in read_jsonl(tmp_path / "p" / "train.jsonl")]
    counts = [labels.count(0), labels.count(1)]
    assert counts == [9, 11]  # half of the 18 negatives relabelled by the poisoning
    assert seen[0] is None
    assert seen[1].tolist() == pytest.approx([20 / (2 * c) for c in counts])
