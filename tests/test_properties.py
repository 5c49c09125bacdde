"""Property-based checks of the poisoners and metric functions on random inputs."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from unbackdoor.attacks import build_poisoner, poison_dataset
from unbackdoor.config import AttackConfig
from unbackdoor.data import LabeledData
from unbackdoor.evaluation import compute_metrics, confusion_matrix

words = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
texts = st.lists(words, min_size=1, max_size=8).map(" ".join)


@st.composite
def datasets(draw):
    k = draw(st.integers(2, 4))
    n = draw(st.integers(k, 40))
    rows = [{"text": draw(texts), "label": i % k} for i in range(n)]
    test = [{"text": draw(texts), "label": i % k} for i in range(draw(st.integers(k, 12)))]
    return LabeledData("random", [f"c{i}" for i in range(k)], draw(st.integers(0, k - 1)), rows, test)


@settings(max_examples=60, deadline=None)
@given(data=datasets(), rate=st.floats(0.01, 1.0), mode=st.sampled_from(["replace", "add"]),
       attack=st.sampled_from(["badnets", "addsent"]), seed=st.integers(0, 10**6))
def test_poisoner_invariants(data, rate, mode, attack, seed):
    cfg = AttackConfig(name=attack, rate=rate, mode=mode)
    ps = poison_dataset(data, build_poisoner(cfg, data), cfg, seed=seed)
    nontarget = sum(r["label"] != data.target for r in data.train)
    assert len(ps.poisoned) == round(rate * nontarget)
    assert len(ps.train) == len(data.train) + (len(ps.poisoned) if mode == "add" else 0)
    assert all(r["label"] == data.target and r["orig_label"] != data.target for r in ps.poisoned)
    assert all(r["label"] == r["orig_label"] for r in ps.clean)
    assert Counter(r["label"] for r in ps.clean) == Counter(
        r["label"] for r in data.train) - (Counter() if mode == "add" else Counter(r["orig_label"] for r in ps.poisoned))
    assert Counter(r["label"] for r in ps.test_triggered) == Counter(r["label"] for r in data.test)
    assert all(len(r["text"].split()) > len(r["clean_text"].split()) for r in ps.poisoned + ps.test_triggered)


@settings(max_examples=200, deadline=None)
@given(k=st.integers(2, 5), data=st.data())
def test_metric_invariants(k, data):
    n = data.draw(st.integers(1, 50))
    labels = st.lists(st.integers(0, k - 1), min_size=n, max_size=n)
    ct, cp, tt, tp = (data.draw(labels) for _ in range(4))
    target = data.draw(st.integers(0, k - 1))
    m = compute_metrics(ct, cp, tt, tp, target, [str(i) for i in range(k)])
    cm = confusion_matrix(tt, tp, k)
    assert sum(map(sum, cm)) == n and [sum(r) for r in cm] == [tt.count(i) for i in range(k)]
    assert abs(m["pacc"] - 100 * sum(cm[i][i] for i in range(k)) / n) < 1e-9
    assert 0 <= m["cacc"] <= 100 and 0 <= m["pacc"] <= 100 and 0 <= m["f1_clean"] <= 100
    if any(t != target for t in tt):
        assert 0 <= m["lfr"] <= 100
    if ct == tt and cp == tp:
        assert all(abs(g) < 1e-9 or g != g for g in m["shift_gap"].values())
