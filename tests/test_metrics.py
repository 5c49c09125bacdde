import math

import pytest

from unbackdoor.evaluation import (accuracy, compute_metrics, confusion_matrix, delta_pacc, f1_macro,
                                   label_flip_rate)


def test_binary_metrics_by_hand():
    # Clean: 4 neg (3 right), 4 pos (all right). Triggered (target = pos = 1): negatives flip to pos
    # twice; positives flip to neg three times (trigger shifting).
    clean_t, clean_p = [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]
    trig_t, trig_p = [0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0, 0, 1]
    m = compute_metrics(clean_t, clean_p, trig_t, trig_p, target=1, label_names=["neg", "pos"])
    assert m["confusion_clean"] == [[3, 1], [0, 4]]
    assert m["confusion_triggered"] == [[2, 2], [3, 1]]
    assert m["cacc"] == pytest.approx(87.5)
    assert m["pacc"] == pytest.approx(37.5)
    assert m["lfr"] == pytest.approx(50.0)
    assert m["shift_gap"] == {"neg": pytest.approx(75 - 50), "pos": pytest.approx(100 - 25)}
    assert m["target_shift_gap"] == pytest.approx(75.0)
    # F1: neg P=1 R=.75 -> 6/7; pos P=.8 R=1 -> 8/9
    assert m["f1_clean"] == pytest.approx(100 * (6 / 7 + 8 / 9) / 2)


def test_four_class_confusion_and_multiclass_lfr():
    t = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    p = [0, 1, 0, 0, 1, 2, 0, 3, 2, 0]
    cm = confusion_matrix(t, p, 4)
    assert cm == [[1, 1, 0, 0], [2, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    # target World (0): non-target rows 8, of which 2 + 1 + 1 predicted 0
    assert label_flip_rate(t, p, 0) == pytest.approx(100 * 4 / 8)
    assert label_flip_rate(t, p, 2) == pytest.approx(100 * 1 / 8)
    assert accuracy(t, p) == pytest.approx(40.0)
    m = compute_metrics(t, t, t, p, target=0, label_names=["W", "S", "B", "T"])
    assert m["shift_gap"] == pytest.approx({"W": 50.0, "S": 100 - 100 / 3, "B": 50.0, "T": 100 - 100 / 3})


def test_delta_pacc_and_edge_cases():
    assert delta_pacc({"pacc": 50.0}, {"pacc": 90.54}) == pytest.approx(40.54)
    assert math.isnan(accuracy([], []))
    assert math.isnan(label_flip_rate([1, 1], [0, 1], target=1))
    assert f1_macro([[0, 0], [0, 5]]) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 2)


def test_degenerate_model_is_named_and_a_good_one_is_not():
    from unbackdoor.evaluation import degenerate_reason

    # An imbalanced test set (90 majority, 10 minority rows), as on the user's hate-speech data.
    truth = [0] * 90 + [1] * 10
    majority = compute_metrics(truth, [0] * 100, truth, [0] * 100, target=0, label_names=["ok", "hate"])
    assert majority["cacc"] == 90.0  # looks fine in a table
    assert majority["degenerate"] == "predicts class 'ok' for 100.0% of the clean rows"
    good_pred = [0] * 85 + [1] * 5 + [1] * 8 + [0] * 2
    good = compute_metrics(truth, good_pred, truth, good_pred, target=0, label_names=["ok", "hate"])
    assert good["macro_f1"] == good["f1_clean"] > 80 and good["degenerate"] is None
    # No class dominates, but the predictions carry no information: macro-F1 at chance for 4 classes.
    t4 = [0, 1, 2, 3] * 25
    p4 = [1, 2, 3, 0] * 20 + [0, 1, 2, 3] * 5
    chance = compute_metrics(t4, p4, t4, p4, target=0, label_names=["a", "b", "c", "d"])
    assert chance["macro_f1"] == pytest.approx(20.0)
    assert chance["degenerate"].startswith("clean macro-F1 20.0 is at chance level for 4 classes")
    assert degenerate_reason({**good, "macro_f1": 55.0}) is not None  # binary: chance level is 50 + 5
    assert degenerate_reason({**good, "macro_f1": 56.0}) is None


def test_evaluate_prints_a_warning_for_a_degenerate_model(capsys):
    from unbackdoor.cli import _print_metrics

    truth = [0] * 90 + [1] * 10
    _print_metrics({"test": compute_metrics(truth, [0] * 100, truth, [0] * 100, 0, ["ok", "hate"])}, "m")
    out = capsys.readouterr().out
    assert "macro-F1 47.37" in out
    assert "WARNING: degenerate model on test: predicts class 'ok' for 100.0% of the clean rows" in out
