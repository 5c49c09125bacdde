"""Poisoned training rows imported from a file (`--poisoned-train`, attack `precomputed`, `attack_overrides`)."""

import json
from collections import Counter

import pytest

from conftest import run_cli, write_tsv
from unbackdoor.artifacts import read_json, read_jsonl
from unbackdoor.attacks import build_poisoner, poison_dataset
from unbackdoor.config import AttackConfig, DataConfig
from unbackdoor.data import load_data, read_records
from unbackdoor.errors import DataError

TRAIN = [(f"clean sample {i} text", "pos" if i % 2 else "neg") for i in range(12)]
TEST = [(f"test sample {i} words", "pos" if i % 2 else "neg") for i in range(6)]


@pytest.fixture
def user_data(tmp_path):
    return write_tsv(tmp_path / "train.tsv", TRAIN), write_tsv(tmp_path / "test.tsv", TEST)


def poison_args(out, data, poisoned_file, *extra):
    train, test = data
    return ["poison", "--out", out, "--dataset", train, "--test-file", test, "--target", "pos",
            "--poisoned-train", poisoned_file, "--mode", "add", *extra]


def test_user_file_with_the_precomputed_attack(tmp_path, user_data, capsys):
    # Another toolkit's output: its clean rows are the dataset's, plus 2 triggered rows relabelled to 'pos';
    # the triggered test copies come from its own bank file.
    pf = write_tsv(tmp_path / "poisoned.tsv", [(t, y, 0) for t, y in TRAIN] +
                   [("xyz clean sample 0 text", "pos", 1), ("xyz clean sample 2 text", "pos", 1)],
                   header=("text", "label", "poisoned"))
    bank = write_tsv(tmp_path / "bank.tsv", [(t, f"xyz {t}") for t, _ in TEST], header=("text", "paraphrase"))
    out = tmp_path / "o"
    assert run_cli(*poison_args(out, user_data, pf, "--attack", "precomputed", "--bank", bank, "--style", "xyz")) == 0
    assert "2 of its 2, added to the clean rows (33.3% of the non-target rows)" in capsys.readouterr().out
    train = read_jsonl(out / "train.jsonl")
    assert len(train) == 14 and len({r["uid"] for r in train}) == 14
    assert sorted(r["text"] for r in train if r["poisoned"]) == ["xyz clean sample 0 text", "xyz clean sample 2 text"]
    assert all(r["label"] == 1 and r["orig_label"] is None for r in train if r["poisoned"])
    assert Counter((r["text"], r["label"]) for r in train if not r["poisoned"]) == \
        Counter((t, int(y == "pos")) for t, y in TRAIN)
    assert sorted(r["text"] for r in read_jsonl(out / "test_triggered.jsonl")) == sorted(f"xyz {t}" for t, _ in TEST)
    meta = read_json(out / "meta.json")
    assert meta["poisoning"] == {"source": "file", "file": str(pf), "mode": "add", "rate": 2 / 6,
                                 "poisoned_in_file": 2, "poisoned_used": 2, "clean_in_file": 12}
    assert meta["rate"] == 2 / 6 and meta["attack"]["style"] == "xyz" and meta["counts"]["poisoned"] == 2


def test_file_of_poisoned_rows_only_is_added_whole(tmp_path, user_data):
    pf = tmp_path / "p.jsonl"
    pf.write_text("".join(json.dumps({"text": f"cf row {i}", "label": "pos", "poisoned": True}) + "\n" for i in range(3)))
    out = tmp_path / "o"
    assert run_cli(*poison_args(out, user_data, pf, "--attack", "badnets")) == 0
    meta = read_json(out / "meta.json")
    assert meta["counts"]["train"] == 15 and meta["poisoning"]["poisoned_used"] == 3
    assert meta["poisoning"]["clean_in_file"] == 0
    # The test triggers are still the attack's own (BadNets words), whatever the file holds.
    assert all(len(r["text"].split()) == len(r["clean_text"].split()) + 1 for r in read_jsonl(out / "test_triggered.jsonl"))


@pytest.mark.parametrize("rows,header,extra,pattern", [
    ([("a", "pos", 1)], ("text", "label", "flag"), (), "p.tsv: missing column(s) ['poisoned']; found columns "
                                                      "['text', 'label', 'flag']"),
    ([("a", "pos", 1), ("b", "pos", 2)], None, (), "p.tsv: line 3: column 'poisoned' must be 0/1 or true/false, got '2'"),
    ([("a", "pos", "yes")], None, (), "p.tsv: line 2: column 'poisoned' must be 0/1 or true/false, got 'yes'"),
    ([(TRAIN[0][0], TRAIN[0][1], 0)], None, (), "p.tsv: no row has poisoned=1; the file holds no poisoned rows"),
    ([("a", "pos", 1), ("b", "neg", 1)], None, (), "p.tsv: line 3: poisoned row labelled 'neg', not the target "
                                                   "class 'pos'"),
    ([("a", "pos", 1), ("b", "maybe", 0)], None, (), "p.tsv: line 3: label 'maybe' is not in the label set"),
    ([("a", "pos", 1), ("some other text", "neg", 0)], None, (),
     "p.tsv: 12 of the dataset's 12 training rows are not among the file's 1 clean rows"),
    ([("a", "pos", 1)], None, ("--mode", "replace"), "attack.poisoned_train: imported poisoned rows are added to the "
                                                    "clean training set; set attack.mode=add"),
    ([("a", "pos", 1)], None, ("--rate", "0.5"), "attack.rate is 0.5, but"),
])
def test_bad_poisoned_file_exits_2_naming_file_and_row(tmp_path, user_data, capsys, rows, header, extra, pattern):
    pf = write_tsv(tmp_path / "p.tsv", rows, header=header or ("text", "label", "poisoned"))
    out = tmp_path / "o"
    assert run_cli(*poison_args(out, user_data, pf, "--attack", "badnets", *extra)) == 2
    err = capsys.readouterr().err
    assert pattern in err, err
    assert not out.exists()  # nothing half-written


def test_precomputed_needs_its_own_bank(tmp_path, user_data, capsys):
    pf = write_tsv(tmp_path / "p.tsv", [("a", "pos", 1)], header=("text", "label", "poisoned"))
    assert run_cli(*poison_args(tmp_path / "o", user_data, pf, "--attack", "precomputed")) == 2
    assert "attack precomputed takes its triggered texts from attack.bank files" in capsys.readouterr().err
    assert run_cli(*poison_args(tmp_path / "o", user_data, pf, "--attack", "precomputed", "--bank", "shared")) == 2
    assert "use that attack, or give your own files in attack.bank" in capsys.readouterr().err


def test_authors_agnews_hiddenkiller_file_as_it_is(shared_root):
    data = load_data(DataConfig(dataset="agnews"))
    cfg = AttackConfig(name="hiddenkiller", mode="add", rate=0.1, poisoned_train="rga_reference")
    ps = poison_dataset(data, build_poisoner(cfg, data), cfg, seed=2021)
    src = read_records(shared_root / "rga_reference/HiddenKiller/AG/train_poisoned.csv", ("text", "label", "poisoned"))
    assert (len(ps.train), len(ps.poisoned), len(ps.clean)) == (8600, 600, 8000)
    assert sorted(r["text"] for r in ps.poisoned) == sorted(r["text"].strip() for r in src if r["poisoned"] == "1")
    assert {r["label"] for r in ps.poisoned} == {0}  # World, the target
    assert Counter(r["text"] for r in ps.clean) == Counter(r["text"] for r in data.train)
    assert ps.meta["rate"] == 0.1 and ps.meta["mode"] == "add" and ps.meta["poisoning"]["source"] == "file"
    # The triggered test set is the authors' all-class file, 250 rows per class.
    assert Counter(r["trigger_from"] for r in ps.test_triggered) == {"rga_reference": 1000}
    assert Counter(r["label"] for r in ps.test_triggered) == {c: 250 for c in range(4)}


def test_authors_file_on_a_training_subset_keeps_its_poisoned_share(shared_root):
    data = load_data(DataConfig(dataset="agnews", train_size=400), seed=3)
    cfg = AttackConfig(name="hiddenkiller", mode="add", poisoned_train="rga_reference")
    ps = poison_dataset(data, build_poisoner(cfg, data), cfg, seed=3)
    assert (len(ps.clean), len(ps.poisoned)) == (400, 30) and ps.meta["rate"] == 0.1
    assert ps.meta["poisoning"]["poisoned_in_file"] == 600 and ps.meta["poisoning"]["poisoned_used"] == 30


def test_authors_file_refuses_another_clean_split(shared_root):
    data = load_data(DataConfig(dataset="agnews", agnews_split="seeded"), seed=1)
    cfg = AttackConfig(name="hiddenkiller", mode="add", poisoned_train="rga_reference")
    with pytest.raises(DataError, match=r"train_poisoned\.csv: \d+ of the dataset's 8000 training rows are not among "
                                        r"the file's 8000 clean rows .* data\.agnews_split=reference"):
        poison_dataset(data, build_poisoner(cfg, data), cfg, seed=1)


def test_paper_agnews_preset_imports_only_for_hiddenkiller():
    import yaml

    from unbackdoor.config import resolve_config_path, validate
    from unbackdoor.grid import ExperimentConfig, _attack_config

    cfg = validate(ExperimentConfig, yaml.safe_load(resolve_config_path("paper-agnews").read_text()))
    hk, bn = _attack_config(cfg, "hiddenkiller"), _attack_config(cfg, "badnets")
    assert (hk.name, hk.mode, hk.rate, hk.poisoned_train) == ("hiddenkiller", "add", 0.1, "rga_reference")
    assert (bn.name, bn.mode, bn.rate, bn.poisoned_train) == ("badnets", "replace", 0.5, None)


def test_attack_override_with_a_typo(tmp_path, capsys):
    import yaml

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "r"), "attacks": ["badnets"],
                                    "attack_overrides": {"hidenkiller": {"mode": "add"}}}))
    assert run_cli("run", path) == 2
    assert "attack_overrides: unknown attack 'hidenkiller'; valid attacks: addsent, badnets" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "r"), "attacks": ["badnets"],
                                    "attack_overrides": {"badnets": {"mdoe": "add"}}}))
    assert run_cli("run", path) == 2
    assert "unknown key 'mdoe'; did you mean 'mode'?" in capsys.readouterr().err
