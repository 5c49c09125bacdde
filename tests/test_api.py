"""The Python API: the quick start of docs/api.md as written, and the functions on objects in memory
(lists, pandas frames, datasets.Dataset, models and tokenizers) with errors that name the argument."""

import re
from pathlib import Path

import pytest

import unbackdoor as ub
from unbackdoor.errors import BaseModelError, ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def first_python_block(path: Path) -> str:
    m = re.search(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
    assert m, f"{path} has no ```python block"
    return m.group(1)


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path, monkeypatch, capsys, shared_root, tmp_cache):
    monkeypatch.chdir(tmp_path)
    exec(compile(first_python_block(ROOT / "docs" / "api.md"), "docs/api.md", "exec"), {"__name__": "quickstart"})
    out = capsys.readouterr().out
    assert re.search(r"^\d+ of 300 training rows poisoned$", out, re.M), out
    assert re.search(r"^epoch 2: lambda \d\.\d\d, CE\(D_p\) \d+\.\d\d$", out, re.M), out
    assert re.search(r"^LFR \d+ -> \d+, PACC \d+ \(ReTrain \d+\)$", out, re.M), out
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def rows(n=24, k=2, word="film"):
    return [(f"a {word} number {i} {'good' if i % k else 'bad'}", i % k) for i in range(n)]


def test_poison_takes_lists_frames_and_datasets_alike():
    import datasets
    import pandas as pd

    train, test = rows(40), rows(10, word="test")
    from_list = ub.poison(train, test=test, target=1, seed=3)
    frame = pd.DataFrame(train, columns=["text", "label"])
    from_frame = ub.poison(frame, test=pd.DataFrame(test, columns=["text", "label"]), target=1, seed=3)
    hf = datasets.Dataset.from_dict({"sentence": [t for t, _ in train],
                                     "y": [y for _, y in train]}).cast_column("y", datasets.ClassLabel(names=["neg", "pos"]))
    from_hf = ub.poison(hf, test=[{"sentence": t, "y": y} for t, y in test], target="pos", seed=3,
                        text_column="sentence", label_column="y")
    assert from_list.train == from_frame.train == from_hf.train
    assert from_hf.label_names == ["neg", "pos"] and from_list.label_names == ["0", "1"]
    assert len(from_list.poisoned) == 10 and all(r["label"] == 1 for r in from_list.poisoned)
    assert {r["label"] for r in from_list.test_triggered} == {0, 1}


def test_poison_errors_name_the_argument_and_row(tmp_path):
    with pytest.raises(DataError, match=r"test: row 1: expected a \(text, label\) pair"):
        ub.poison(rows(), test=[("ok", 0), ("no label",)], target=1)
    with pytest.raises(DataError, match="data: expected a datasets.Dataset, a pandas DataFrame"):
        ub.poison(42, test=rows(), target=1)
    with pytest.raises(DataError, match="pass target="):
        ub.poison(rows(), test=rows())
    with pytest.raises(DataError, match="need test="):
        ub.poison(rows(), target=1)
    with pytest.raises(ConfigError, match="poison: unknown setting 'rat'; did you mean 'rate'"):
        ub.poison(rows(), test=rows(), target=1, rat=0.3)
    with pytest.raises(ConfigError, match="'attack.rate'|'rate'"):
        ub.poison(rows(), test=rows(), target=1, rate=2)


@pytest.fixture(scope="module")
def tiny_set():
    return ub.poison(rows(48), test=rows(16, word="test"), target=1, rate=0.5, seed=1)


@pytest.fixture(scope="module")
def tiny_model(tiny_set, tiny_base, tmp_cache):
    return ub.train_victim(tiny_set, tiny_base, epochs=1, lr=1e-3, batch_size=8, max_length=16)


def test_unlearn_in_memory_returns_the_model_and_its_curve(tiny_set, tiny_model, tiny_base, tmp_path):
    import torch

    model, tok = tiny_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out, curve = ub.unlearn(model, tok, forget=tiny_set.poisoned, retain=tiny_set.clean, method="rga",
                            base_model=tiny_base, epochs=2, lr=1e-3, batch_size=8, max_length=16, alpha=1.0,
                            eval_data=tiny_set, eval_every=1, out=tmp_path / "work")
    assert out is model and not model.training
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert [c["epoch"] for c in curve] == [1, 2]
    assert all(0 < c["lambda"] <= 1 and c["l2"] > 0 and "test" in c for c in curve)
    assert (tmp_path / "work" / "loss_log.jsonl").is_file()  # out= keeps the working folder


def test_unlearn_settings_and_inputs_are_checked(tiny_set, tiny_model):
    model, tok = tiny_model
    kw = dict(forget=tiny_set.poisoned, retain=tiny_set.clean)
    with pytest.raises(ConfigError, match=r"unlearn\(method='rga'\): unknown setting 'alpah'; did you mean 'alpha'"):
        ub.unlearn(model, tok, method="rga", alpah=1, **kw)
    with pytest.raises(ConfigError, match="unknown unlearning method 'sga'"):
        ub.unlearn(model, tok, method="sga", **kw)
    with pytest.raises(BaseModelError, match="base_model="):  # a model in memory does not know its theta_base
        ub.unlearn(model, tok, method="rga", epochs=1, **kw)
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        ub.unlearn(model, method="ga", **kw)
    with pytest.raises(DataError, match="forget: row 0: missing key"):
        ub.unlearn(model, tok, method="ga", forget=[{"text": "x"}], retain=tiny_set.clean)


def test_evaluate_returns_metrics_and_the_verdict(tiny_set, tiny_model):
    model, tok = tiny_model
    metrics, verdict = ub.evaluate(model, tok, tiny_set, max_length=16)
    assert verdict.outcome == "no verdict"
    assert sum(map(sum, metrics["confusion_triggered"])) == len(tiny_set.test_triggered)
    # Against a ReTrain whose triggered predictions are all correct, a model that keeps some triggered
    # negatives as positive is judged, and dPACC is its PACC distance.
    perfect = {**metrics, "pacc": 100.0, "confusion_triggered": [[8, 0], [0, 8]],
               "confusion_clean": [[8, 0], [0, 8]], "macro_f1": 100.0}
    judged, verdict = ub.evaluate(model, tok, tiny_set, retrain=perfect, max_length=16)
    assert verdict.outcome in ("backdoor", "shifted", "neutralised", "no verdict")
    assert judged["delta_pacc"] == pytest.approx(abs(judged["pacc"] - 100.0))
    with pytest.raises(DataError, match="data: expected a PoisonedSet"):
        ub.evaluate(model, tok, rows())


def test_detect_in_memory_and_its_split(tiny_set, tiny_base):
    found = ub.detect(data=tiny_set, detector="loss", base_model=tiny_base, fraction=0.25, epochs=1, max_length=16)
    flagged, others = found.split(tiny_set.train)
    assert len(flagged) == round(0.25 * len(tiny_set.train)) and len(flagged) + len(others) == len(tiny_set.train)
    assert found.metrics["flagged"] == len(flagged) and found.metrics["poisoned"] == len(tiny_set.poisoned)
    with pytest.raises(ConfigError, match="reads the poisoned model: pass model="):
        ub.detect(data=tiny_set, detector="cube")


def test_paths_work_as_the_command_line_wrote_them(poisoned, tiny_victim):
    from unbackdoor.artifacts import read_json

    written = read_json(tiny_victim / "metrics.json")["metrics"]["test"]
    metrics, verdict = ub.evaluate(tiny_victim, data=poisoned, max_length=48)
    assert (metrics["cacc"], metrics["pacc"], metrics["confusion_triggered"]) == (
        written["cacc"], written["pacc"], written["confusion_triggered"])
    ps = ub.load_poisoned_set(poisoned)
    # A victim loaded from its run folder knows its theta_base (unbackdoor.json): no base_model= needed.
    model, curve = ub.unlearn(tiny_victim, forget=ps.poisoned, retain=ps.clean, method="rga", epochs=1,
                              max_length=48)
    assert curve[0]["l2"] > 0 and not model.training
