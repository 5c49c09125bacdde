"""Metrics: CACC, LFR, PACC, dPACC, confusion matrices and the per-class trigger-shift gap.

All percentages are in [0, 100], as in the paper's tables.
"""

from __future__ import annotations

from typing import Sequence


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> list[list[int]]:
    """cm[i][j] = number of samples of true class i predicted as j."""
    cm = [[0] * num_labels for _ in range(num_labels)]
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t][p] += 1
    return cm


def accuracy(y_true, y_pred) -> float:
    if len(y_true) == 0:
        return float("nan")
    return 100.0 * sum(int(t == p) for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def label_flip_rate(y_true, y_pred, target: int) -> float:
    """Share of triggered samples from non-target classes predicted as the target class."""
    pairs = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t != target]
    if not pairs:
        return float("nan")
    return 100.0 * sum(int(p == target) for _, p in pairs) / len(pairs)


def label_flip_rate_macro(cm_triggered: list[list[int]], target: int) -> float:
    """The authors' multi-class LFR: the share predicted as the target, per non-target class, averaged
    over those classes. Equals the pooled LFR when the non-target classes are the same size."""
    rates = [100.0 * row[target] / sum(row) for i, row in enumerate(cm_triggered) if i != target and sum(row)]
    return sum(rates) / len(rates) if rates else float("nan")


def recalls(cm: list[list[int]]) -> list[float]:
    return [100.0 * row[i] / sum(row) if sum(row) else float("nan") for i, row in enumerate(cm)]


def f1_macro(cm: list[list[int]]) -> float:
    k = len(cm)
    f1s = []
    for i in range(k):
        tp = cm[i][i]
        fp = sum(cm[j][i] for j in range(k)) - tp
        fn = sum(cm[i]) - tp
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * sum(f1s) / k


def degenerate_reason(metrics: dict) -> str | None:
    """Why a model's numbers mean nothing (it learned no classifier), or None.

    Such a model still gets a high CACC on imbalanced data and an LFR of 0 or 100 whatever happened
    to the backdoor, so its row must not be read as a result."""
    cm = metrics["confusion_clean"]
    n, k = sum(map(sum, cm)), len(cm)
    if n == 0:
        return None
    predicted = [sum(row[j] for row in cm) for j in range(k)]
    top = max(range(k), key=predicted.__getitem__)
    if predicted[top] >= 0.95 * n:
        names = list(metrics.get("shift_gap") or range(k))
        return f"predicts class '{names[top]}' for {100 * predicted[top] / n:.1f}% of the clean rows"
    f1 = metrics.get("macro_f1", metrics.get("f1_clean"))
    # Guessing independently of the text, with any class frequencies, gives class i an F1 equal to the
    # harmonic mean of its prevalence and its prediction share; those means sum to at most 1, so
    # macro-F1 <= 100/k. 5 points above that covers the sampling noise of a few hundred test rows
    # (the standard error of a rate there is about 3 points).
    if f1 <= 100 / k + 5:
        return f"clean macro-F1 {f1:.1f} is at chance level for {k} classes (<= {100 / k + 5:.0f})"
    return None


def compute_metrics(clean_true, clean_pred, trig_true, trig_pred, target: int, label_names: list[str]) -> dict:
    k = len(label_names)
    cm_clean = confusion_matrix(clean_true, clean_pred, k)
    cm_trig = confusion_matrix(trig_true, trig_pred, k)
    rc, rt = recalls(cm_clean), recalls(cm_trig)
    # Trigger-shift gap: recall lost on a class when the trigger is present. After trigger shifting the
    # target class's gap is large (its triggered samples flip), though PACC may still look moderate.
    gap = {label_names[i]: rc[i] - rt[i] for i in range(k)}
    out = {
        "cacc": accuracy(clean_true, clean_pred),
        "pacc": accuracy(trig_true, trig_pred),
        "lfr": label_flip_rate(trig_true, trig_pred, target),  # pooled over the non-target rows
        "lfr_macro": label_flip_rate_macro(cm_trig, target),
        "f1_clean": f1_macro(cm_clean),
        "macro_f1": f1_macro(cm_clean),
        "shift_gap": gap,
        "target_shift_gap": gap[label_names[target]],
        "confusion_clean": cm_clean,
        "confusion_triggered": cm_trig,
        "n_clean": len(clean_true),
        "n_triggered": len(trig_true),
    }
    out["degenerate"] = degenerate_reason(out)
    return out


def delta_pacc(metrics: dict, retrain_metrics: dict) -> float:
    return abs(metrics["pacc"] - retrain_metrics["pacc"])


def predict_labels(model, tokenizer, rows: list[dict], max_length: int = 128, batch_size: int = 128,
                   accelerator=None) -> list[int]:
    from .batches import Collator, TokenizedSet, predict_logits

    logits = predict_logits(model, TokenizedSet(tokenizer, rows, max_length), Collator(tokenizer), batch_size, accelerator)
    return logits.argmax(-1).tolist()


def evaluate(model, tokenizer, clean_rows: list[dict], triggered_rows: list[dict], target: int,
             label_names: list[str], max_length: int = 128, batch_size: int = 128, accelerator=None,
             clean_pred: list[int] | None = None) -> dict:
    """clean_pred: the predictions on clean_rows when known (several triggered sets, one clean set)."""
    if clean_pred is None:
        clean_pred = predict_labels(model, tokenizer, clean_rows, max_length, batch_size, accelerator)
    trig_pred = predict_labels(model, tokenizer, triggered_rows, max_length, batch_size, accelerator)
    return compute_metrics([r["label"] for r in clean_rows], clean_pred, [r["label"] for r in triggered_rows],
                           trig_pred, target, label_names)
