"""Bad input: a clear message naming the file/row/field, exit code 2, and no output left behind."""

import pytest

from conftest import write_tsv
from conftest import run_cli


def check(capsys, out, args, *patterns):
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert code == 2, err
    for p in patterns:
        assert p in err, err
    assert not out.exists() or not any(out.iterdir())


def test_missing_data_file(tmp_path, capsys):
    out = tmp_path / "o"
    check(capsys, out, ["poison", "--out", out, "--dataset", tmp_path / "nope.tsv", "--test-file", tmp_path / "t.tsv"],
          "nope.tsv: file not found")


def test_missing_column_and_unknown_label(tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", [("good", "pos"), ("bad", "neg")], header=("sentence", "label"))
    out = tmp_path / "o"
    check(capsys, out, ["poison", "--out", out, "--dataset", train, "--test-file", train, "--target", "pos"],
          "train.tsv: missing column(s) ['text']")
    test = write_tsv(tmp_path / "test.tsv", [("fine", "pos"), ("meh", "neutral")])
    train = write_tsv(tmp_path / "train2.tsv", [("good", "pos"), ("bad", "neg")])
    check(capsys, out, ["poison", "--out", out, "--dataset", train, "--test-file", test, "--target", "pos"],
          "test.tsv: line 3: label 'neutral' is not in the label set ['neg', 'pos']")


def test_empty_text(tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", [("good", "pos"), ("  ", "neg")])
    check(capsys, tmp_path / "o", ["poison", "--out", tmp_path / "o", "--dataset", train, "--test-file", train],
          "train.tsv: line 3: empty text in column 'text'")


def test_target_not_in_dataset(tmp_path, capsys, shared_root):
    check(capsys, tmp_path / "o", ["poison", "--out", tmp_path / "o", "--target", "neutral"],
          "target class 'neutral' is not in the dataset's classes ['negative', 'positive']")


def test_unknown_attack_lists_valid_names(tmp_path, capsys, shared_root):
    check(capsys, tmp_path / "o", ["poison", "--out", tmp_path / "o", "--attack", "ripples"],
          "unknown attack 'ripples'; valid attacks: addsent, badnets, hiddenkiller, precomputed, stylebkd")


def test_config_typo_suggests_the_key_and_rate_out_of_range(tmp_path, capsys):
    check(capsys, tmp_path / "o", ["poison", "--out", tmp_path / "o", "-s", "attack.rat=0.3"],
          "unknown key 'attack.rat'; did you mean 'rate'?")
    check(capsys, tmp_path / "o", ["poison", "--out", tmp_path / "o", "--rate", "1.5"],
          "'attack.rate': Input should be less than or equal to 1")


def test_model_path_that_does_not_exist(tmp_path, capsys, shared_root):
    p = tmp_path / "p"
    assert run_cli("poison", "--out", p, "--train-size", 40, "--test-size", 20) == 0
    check(capsys, tmp_path / "v", ["train", "--poisoned-set", p, "--out", tmp_path / "v", "--model", "./no/such/model"],
          "model path ./no/such/model does not exist")
    check(capsys, tmp_path / "u", ["unlearn", "--model", tmp_path / "missing", "--poisoned-set", p,
                                   "--out", tmp_path / "u"], "does not exist")


def test_poison_refuses_to_overwrite(tmp_path, capsys, shared_root):
    p = tmp_path / "p"
    assert run_cli("poison", "--out", p, "--train-size", 40, "--test-size", 20) == 0
    assert run_cli("poison", "--out", p, "--train-size", 40, "--test-size", 20) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_library_errors_a_user_can_cause_are_unbackdoor_errors():
    import torch

    from unbackdoor import errors, training
    from unbackdoor.config import UnlearnConfig
    from unbackdoor.objectives import build_objective

    assert training.DivergenceError is errors.DivergenceError and training.Interrupted is errors.Interrupted
    model = torch.nn.Linear(2, 2)
    with pytest.raises(errors.UnbackdoorError, match="npo needs the poisoned model's outputs on D_p"):
        build_objective(UnlearnConfig(method="npo")).setup(model)
    rga = build_objective(UnlearnConfig(method="rga"))
    rga.set_reference(torch.zeros(4, 2))
    with pytest.raises(errors.BaseModelError, match="--base-model NAME_OR_PATH"):
        rga.setup(model)
