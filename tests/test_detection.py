"""Detectors: the precision/recall arithmetic, each detector's core on planted data, and the CLI
whose output `unbackdoor unlearn --poisoned-set` reads."""

import numpy as np
import pytest

from conftest import run_cli
from unbackdoor.artifacts import read_json, read_jsonl, write_json
from unbackdoor.config import DetectConfig
from unbackdoor.detectors import build_detector, lowest_fraction, precision_recall_f1
from unbackdoor.detectors.cube import cube_flags
from unbackdoor.errors import ConfigError


def test_precision_recall_by_hand():
    flags = [1, 1, 1, 0, 0, 0, 1, 0]
    truth = [1, 1, 0, 1, 0, 0, 0, 0]
    m = precision_recall_f1(flags, truth)
    assert (m["tp"], m["fp"], m["fn"], m["flagged"], m["poisoned"]) == (2, 2, 1, 4, 3)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert precision_recall_f1([0, 0], [0, 1])["precision"] == 0.0


def test_lowest_fraction_flags_the_lowest_losses():
    losses = np.array([0.9, 0.01, 0.5, 0.02, 0.7, 0.03, 0.8, 0.6])
    assert np.flatnonzero(lowest_fraction(losses, 0.375)).tolist() == [1, 3, 5]


def test_cube_separates_a_planted_minority_cluster():
    rng = np.random.default_rng(0)
    clean0 = rng.normal(0, 1, (300, 16)) + np.r_[5, np.zeros(15)]
    clean1 = rng.normal(0, 1, (240, 16)) + np.r_[0, 5, np.zeros(14)]
    poison1 = rng.normal(0, 1, (60, 16)) + np.r_[0, 0, 9, np.zeros(13)]  # labelled 1, elsewhere in feature space
    emb = np.vstack([clean0, clean1, poison1])
    labels = np.r_[np.zeros(300), np.ones(300)].astype(int)
    truth = np.r_[np.zeros(540), np.ones(60)].astype(bool)
    flags, scores = cube_flags(emb, labels, DetectConfig(umap_neighbors=30))
    m = precision_recall_f1(flags, truth)
    assert m["recall"] >= 0.9 and m["precision"] >= 0.9, m
    assert scores[truth].mean() > scores[~truth].mean()


def _blobs_and_noise():
    """Reduced features: a big blob per label, a smaller separate blob of label 1 (the poison), and
    points scattered over the whole space."""
    rng = np.random.default_rng(0)
    big0 = rng.normal(0, 1, (400, 4)) + [10, 0, 0, 0]
    big1 = rng.normal(0, 1, (400, 4)) + [0, 10, 0, 0]
    small1 = rng.normal(0, 1, (160, 4)) + [0, 0, 10, 0]
    scattered = rng.uniform(-20, 30, (30, 4))
    labels = np.r_[np.zeros(400), np.ones(560), np.arange(30) % 2].astype(int)
    kind = np.array(["big"] * 800 + ["small"] * 160 + ["noise"] * 30)
    return np.vstack([big0, big1, small1, scattered]), labels, kind


def test_cube_authors_mode_flags_the_small_blob_and_the_noise(monkeypatch):
    import umap

    class Identity:  # the clustering is under test, not UMAP (test above): features go in as reduced
        def __init__(self, **kw):
            pass

        def fit_transform(self, x):
            return x

    monkeypatch.setattr(umap, "UMAP", Identity)
    emb, labels, kind = _blobs_and_noise()
    authors, scores = cube_flags(emb, labels, DetectConfig(cube_mode="authors"))
    assert not authors[kind == "big"].any() and authors[kind == "small"].all()
    assert authors[kind == "noise"].mean() >= 0.9  # noise is flagged (a stray point may join a big blob)
    assert scores[kind == "small"].min() > scores[kind == "big"].max()
    # Our default clusters per label and leaves noise unflagged: the same blob, not the scattered points.
    per_label, _ = cube_flags(emb, labels, DetectConfig())
    assert not per_label[kind == "big"].any() and per_label[kind == "small"].all()
    assert not per_label[kind == "noise"].any()
    # Fewer rows than one 150-row cluster needs: nothing can be told apart, nothing is flagged.
    few, _ = cube_flags(emb[:120], labels[:120], DetectConfig(cube_mode="authors"))
    assert not few.any()
    assert DetectConfig(cube_mode="authors").min_samples is None  # 120 in authors mode, HDBSCAN's own in per_label


def test_unknown_detector():
    with pytest.raises(ConfigError, match="unknown detector 'strip'; valid detectors: cube, loss"):
        build_detector(DetectConfig(detector="strip"))


@pytest.mark.parametrize("detector", ["loss", "cube"])
def test_detect_cli_writes_a_flag_file_unlearn_reads(tmp_path, poisoned, tiny_victim, detector, monkeypatch):
    if detector == "cube":
        import unbackdoor.detectors.cube as detection

        # The tiny random victim's features separate nothing, so cube may flag nothing. Planted features,
        # the poisoned rows in a cluster of their own, must be flagged (the clustering alone is tested above).
        def planted(model, tok, rows, max_length, batch_size):
            rng = np.random.default_rng(0)
            return np.stack([np.eye(16)[2 if r["poisoned"] else r["label"]] * (9 if r["poisoned"] else 5)
                             + rng.normal(0, 1, 16) for r in rows])

        monkeypatch.setattr(detection, "head_inputs", planted)
    out = tmp_path / "flags.jsonl"
    assert run_cli("detect", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--detector", detector,
                   "--umap-neighbors", 15, "--max-length", 48, "--fraction", 0.25) == 0
    rows = read_jsonl(out)
    train = read_jsonl(poisoned / "train.jsonl")
    assert [r["text"] for r in rows] == [r["text"] for r in train] and {r["poisoned"] for r in rows} <= {0, 1}
    m = read_json(tmp_path / "flags.metrics.json")["metrics"]
    assert m["poisoned"] == sum(r["poisoned"] for r in train) and m["flagged"] == sum(r["poisoned"] for r in rows)
    if detector == "loss":
        assert m["flagged"] == round(0.25 * len(train))
    else:
        assert m["recall"] >= 0.9 and m["precision"] >= 0.9, m
    assert 0 < m["flagged"] < len(rows)
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", out, "--eval-set", poisoned,
                   "--out", tmp_path / "u", "--method", "ga", "--epochs", 1, "--max-length", 48) == 0
    assert read_json(tmp_path / "u" / "metrics.json")["n_poisoned"] == m["flagged"]


def test_grid_unlearns_from_detector_output_and_partial_ground_truth(tmp_path, tiny_base, shared_root, tmp_cache):
    from test_experiments import grid_config

    cfg = grid_config(tmp_path, tiny_base, methods=["ga"], detectors=["loss"], poisoned_fractions=[0.5],
                      detect={"fraction": 0.2, "max_length": 32})
    assert run_cli("run", cfg) == 0
    cell = tmp_path / "results" / "sst2" / "badnets" / "seed1"
    n_true = read_json(cell / "poisoned" / "meta.json")["counts"]["poisoned"]
    det = read_json(cell / "detect-loss" / "flags.metrics.json")["metrics"]
    assert read_json(cell / "ga" / "metrics.json")["n_poisoned"] == n_true
    assert read_json(cell / "ga-loss" / "metrics.json")["n_poisoned"] == det["flagged"] == round(0.2 * 120)
    assert read_json(cell / "ga-gt50" / "metrics.json")["n_poisoned"] == round(0.5 * n_true)
    table = (tmp_path / "results" / "report" / "table.md").read_text()
    # A tiny victim may be flagged "⚠ degenerate" after its name; the row must be there either way.
    assert "| ga-loss |" in table.replace(" ⚠ degenerate", "") and "| ga-gt50 |" in table.replace(" ⚠ degenerate", "")


@pytest.fixture(scope="module")
def smollm2(tmp_cache):
    from unbackdoor.errors import ModelError
    from unbackdoor.models import resolve_model

    try:
        return resolve_model("smollm2")
    except ModelError as e:
        pytest.skip(str(e))


def test_onion_removes_exactly_one_word(smollm2):
    from transformers import AutoTokenizer

    from unbackdoor.detectors.onion import word_tokens

    tok = AutoTokenizer.from_pretrained(smollm2)
    spans = word_tokens(tok, "a gorgeously strange cf movie , n't it", 64)
    assert len(spans) == 8
    without = [t for i, s in enumerate(spans) if i != 3 for t in s]
    assert tok.decode(without) == "a gorgeously strange movie , n't it"
    assert sum(map(len, word_tokens(tok, "word " * 100, 16))) == 15  # room left for BOS


def test_onion_ranks_planted_trigger_words_above_chance(tmp_path, poisoned, smollm2):
    out = tmp_path / "flags.jsonl"
    train = read_jsonl(poisoned / "train.jsonl")
    share = sum(r["poisoned"] for r in train) / len(train)
    assert run_cli("detect", "--model", poisoned, "--poisoned-set", poisoned, "--out", out, "--detector", "onion",
                   "--onion-top-words", 3, "--fraction", round(share, 3), "--max-length", 48) == 0
    m = read_json(tmp_path / "flags.metrics.json")["metrics"]
    # BadNets inserts rare tokens (cf, mn, bb, tq): removing one lowers the LM's perplexity far more than
    # removing a normal word, so the flagged share is mostly poisoned (chance = the poisoned share).
    assert m["precision"] >= 1.6 * share, m
    scores = np.array([r["score"] for r in read_jsonl(out)])
    truth = np.array([r["poisoned"] for r in train], bool)
    assert scores[truth].mean() > scores[~truth].mean()


def test_loss_detector_flags_planted_triggers_above_chance(tmp_path, poisoned, tmp_cache):
    # The loss detector fine-tunes the victim's clean base (read from its unbackdoor.json) and flags the
    # rows with the lowest loss after it. It needs a base that can learn the trigger in a
    # few steps, so this uses the embedded MiniLM: only the recorded base matters, not the victim's weights.
    from unbackdoor.models import META_FILE, resolve_base

    victim = tmp_path / "victim"
    write_json(victim / META_FILE, {"base_model": "minilm"})
    rows = read_jsonl(poisoned / "train.jsonl")
    truth = np.array([r["poisoned"] for r in rows], bool)
    share = truth.mean()
    det = build_detector(DetectConfig(detector="loss", epochs=4, lr=1e-4, batch_size=16, max_length=48,
                                      fraction=float(share))).detect(rows, ["negative", "positive"],
                                                                     base=resolve_base(victim))
    # Measured: precision 0.395 against a poisoned share of 0.2375 (1.66x); the detector is weak, not random.
    assert precision_recall_f1(det.flags, truth)["precision"] >= 1.3 * share
    scores = np.asarray(det.scores)
    assert scores[truth].mean() > scores[~truth].mean()  # lower loss on the poisoned rows on average
