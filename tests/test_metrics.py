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
