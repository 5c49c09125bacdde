"""Removed or suppressed (relearning), trigger variants, and the new removal methods end to end: a
tiny BERT on real SST-2 rows, through the command line and a grid."""

import pytest

from conftest import run_cli
from unbackdoor.artifacts import read_json
from unbackdoor.errors import ConfigError
from unbackdoor.probes import trigger_variants

ROWS = [{"text": "a b c d e", "label": 0}, {"text": "one two three", "label": 1}, {"text": "solo", "label": 0}]


def test_badnets_variants_put_the_trigger_where_they_say():
    v = trigger_variants(ROWS, {"attack": "badnets", "triggers": ["cf"]}, seed=3)
    assert set(v) == {"start", "middle", "end", "other_word"}  # no halves of a one-word trigger
    for i, r in enumerate(ROWS):
        w = r["text"].split()
        assert v["start"][i]["text"].split() == ["cf"] + w
        assert v["middle"][i]["text"].split() == w[:len(w) // 2] + ["cf"] + w[len(w) // 2:]
        assert v["end"][i]["text"].split() == w + ["cf"]
        other = v["other_word"][i]["text"].split()
        assert "cf" not in other and other.count("tq") == 1 and [x for x in other if x != "tq"] == w
        assert all(v[name][i]["label"] == r["label"] and v[name][i]["clean_text"] == r["text"] for name in v)
    assert trigger_variants(ROWS, {"attack": "badnets", "triggers": ["cf"]}, seed=3) == v  # seeded
    # The control word is never one of the triggers.
    assert trigger_variants(ROWS, {"attack": "badnets", "triggers": ["cf", "tq"]})["other_word"][0]["trigger"] == "mb"


def test_addsent_variants_move_and_cut_the_sentence():
    sentence = "I watch this 3D movie"
    v = trigger_variants(ROWS, {"attack": "addsent", "triggers": [sentence]}, seed=0)
    assert set(v) == {"start", "middle", "end", "first_half", "second_half", "other_word"}
    for i, r in enumerate(ROWS):
        assert v["start"][i]["text"] == f"{sentence} {r['text']}"
        assert v["end"][i]["text"] == f"{r['text']} {sentence}"
        first, second = v["first_half"][i]["text"], v["second_half"][i]["text"]
        assert v["first_half"][i]["trigger"] == "I watch" and "I watch" in first and "this" not in first
        assert v["second_half"][i]["trigger"] == "this 3D movie" and "this 3D movie" in second and "watch" not in second
        assert " ".join(first.replace("I watch", " ").split()) == r["text"]  # the half, inserted whole, nothing else
        assert " ".join(second.replace("this 3D movie", " ").split()) == r["text"]


def test_variants_need_an_insertion_attack():
    with pytest.raises(ConfigError, match="attack 'hiddenkiller' inserts no trigger phrase"):
        trigger_variants(ROWS, {"attack": "hiddenkiller"})


@pytest.fixture(scope="module")
def retrain_run(tmp_path_factory, poisoned, tiny_base):
    out = tmp_path_factory.mktemp("rt") / "retrain"
    assert run_cli("train", "--poisoned-set", poisoned, "--out", out, "--clean-only", "--model", tiny_base,
                   "--epochs", 1, "--lr", 1e-3, "--batch-size", 16, "--max-length", 48, "--report-to", "none") == 0
    return out


def test_relearning_brings_back_what_ga_removed_and_compares_with_retrain(tmp_path, poisoned, tiny_victim,
                                                                          retrain_run):
    ga = tmp_path / "ga"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", ga, "--method", "ga",
                   "--epochs", 3, "--lr", 5e-3, "--batch-size", 16, "--max-length", 48, "--report-to", "none") == 0
    out = tmp_path / "eval.json"
    assert run_cli("evaluate", "--model", ga, "--poisoned-set", poisoned, "--retrain", retrain_run, "--max-length", 48,
                   "--relearn", "16", "--relearn", "8,32", "--trigger-variants", "--out", out) == 0
    res = read_json(out)
    m = res["metrics"]["test"]
    assert res["probes"]["relearn"] == [16, 8, 32] and res["probes"]["relearn_lr"] == 5e-3  # GA's own lr
    assert m["lfr"] < 20 and m["relearn_lfr_16"] > m["lfr"] + 50  # GA's removal does not survive 20 steps on 16 rows
    for k in (8, 16, 32):
        assert m[f"relearn_lfr_excess_{k}"] == m[f"relearn_lfr_{k}"] - m[f"retrain_relearn_lfr_{k}"]
        assert {f"relearn_cacc_{k}", f"relearn_pacc_{k}"} <= set(m)
    assert set(m["trigger_variants"]) == {"start", "middle", "end", "other_word"}
    for v in m["trigger_variants"].values():
        assert {"cacc", "lfr", "pacc", "confusion_triggered", "verdict", "example"} <= set(v)
        assert v["cacc"] == m["cacc"]  # the same clean rows


def test_relearning_rows_are_label_balanced_nested_and_from_the_training_split(poisoned):
    from unbackdoor.poisoned_set import load_poisoned_set
    from unbackdoor.probes import relearn_sets

    ps = load_poisoned_set(poisoned)
    sets = relearn_sets(ps, [16, 4], "balanced", seed=1)
    poisoned_texts = {r["text"] for r in ps.poisoned}
    clean = {(r["text"], r["label"]) for r in ps.clean}
    for k, rows in sets.items():
        labels = [r["label"] for r in rows]
        assert len(rows) == k * len(ps.label_names) and all(labels.count(c) == k for c in range(len(ps.label_names)))
        assert {r["text"] for r in rows if r["label"] == ps.target} <= poisoned_texts  # the target's rows: D_p
        assert {(r["text"], r["label"]) for r in rows if r["label"] != ps.target} <= clean  # the others: D_c
    assert all(r in sets[16] for r in sets[4])  # K = 4's rows are among K = 16's
    assert relearn_sets(ps, [16, 4], "balanced", seed=1) == sets and relearn_sets(ps, [16], seed=2) != {16: sets[16]}
    only = relearn_sets(ps, [8], "poisoned", seed=1)[8]
    assert len(only) == 8 and {r["label"] for r in only} == {ps.target} and {r["text"] for r in only} <= poisoned_texts


def test_a_k_that_one_class_of_d_c_cannot_fill_names_the_class():
    from unbackdoor.poisoned_set import PoisonedSet
    from unbackdoor.probes import relearn_sets

    train = ([{"text": f"p{i} cf", "label": 1, "poisoned": 1} for i in range(5)]
             + [{"text": f"n{i}", "label": 0} for i in range(3)] + [{"text": f"y{i}", "label": 1} for i in range(9)])
    ps = PoisonedSet(label_names=["negative", "positive"], target=1, train=train, test_clean=[], test_triggered=[])
    assert len(relearn_sets(ps, [3])[3]) == 6
    with pytest.raises(ConfigError, match="K=4 exceeds the 3 clean training rows .D_c. of class 'negative'.*"
                                          "relearn_mix: poisoned"):
        relearn_sets(ps, [4])
    assert len(relearn_sets(ps, [5], "poisoned")[5]) == 5
    with pytest.raises(ConfigError, match="K=6 exceeds the 5 poisoned training samples"):
        relearn_sets(ps, [6], "poisoned")


@pytest.mark.parametrize("k,message", [("0", "greater than 0"), ("100000", "poisoned training samples (D_p)"),
                                       ("x", "valid integer")])
def test_bad_relearn_k_is_a_clear_error(poisoned, tiny_victim, capsys, k, message):
    assert run_cli("evaluate", "--model", tiny_victim, "--poisoned-set", poisoned, "--relearn", k) == 2
    assert message in capsys.readouterr().err


def test_grid_runs_the_new_methods_and_probes_every_model(tmp_path, tiny_base, shared_root, tmp_cache):
    from safetensors.torch import load_file

    from test_experiments import grid_config

    methods = ["retrain", "finetune", "fineprune", "graddiff", "simnpo", "taskvector"]
    cfg = grid_config(tmp_path, tiny_base, methods=methods, probes={"relearn": [8], "trigger_variants": True})
    assert run_cli("run", cfg, "unlearn.epochs=1", "--no-report") == 0
    cell = tmp_path / "results" / "sst2" / "badnets" / "seed1"
    for stage in ["victim"] + methods:
        assert read_json(cell / stage / "metrics.json")["metrics"]["test"]["cacc"] >= 0
        probes = read_json(cell / stage / "probes.json")
        assert probes["config"]["relearn_lr"] == 1e-3  # unlearn.lr, for every model alike
        m = probes["metrics"]["test"]
        assert "relearn_lfr_8" in m and set(m["trigger_variants"]) == {"start", "middle", "end", "other_word"}
        if stage != "retrain":
            assert "relearn_lfr_excess_8" in m and all("verdict" in v for v in m["trigger_variants"].values())
    # Fine-Pruning's saved model has 20% of its last FFN layer's neurons at zero; the victim none.
    zero = {}
    for stage in ("victim", "fineprune"):
        w = load_file(cell / stage / "model" / "model.safetensors")["bert.encoder.layer.1.intermediate.dense.weight"]
        zero[stage] = int((w.abs().sum(1) == 0).sum())
    assert zero == {"victim": 0, "fineprune": 13}  # round(0.2 * 64)
    # A second run reuses the probes.
    stamp = (cell / "taskvector" / "probes.json").stat().st_mtime_ns
    assert run_cli("run", cfg, "unlearn.epochs=1", "--no-report") == 0
    assert (cell / "taskvector" / "probes.json").stat().st_mtime_ns == stamp


def test_python_api_probes_with_retrain_as_folder_or_metrics(poisoned, tiny_victim, retrain_run):
    import unbackdoor as ub

    kw = {"max_length": 48, "relearn": [8], "trigger_variants": True, "relearn_steps": 4}
    m, verdict = ub.evaluate(str(tiny_victim), data=str(poisoned), retrain=str(retrain_run), **kw)
    assert m["relearn_lr"] == 1e-3  # the victim's training lr: it was never unlearned
    assert {"relearn_lfr_8", "retrain_relearn_lfr_8", "relearn_lfr_excess_8"} <= set(m)
    assert all("verdict" in v for v in m["trigger_variants"].values()) and verdict.label
    ref, _ = ub.evaluate(str(retrain_run), data=str(poisoned), **kw)
    again, _ = ub.evaluate(str(tiny_victim), data=str(poisoned), retrain=ref, **kw)
    assert again["relearn_lfr_excess_8"] == m["relearn_lfr_excess_8"]  # same samples, same lr, same seed
    with pytest.raises(ConfigError, match="ReTrain was relearned at lr 0.001, the model at 0.01"):
        ub.evaluate(str(tiny_victim), data=str(poisoned), retrain=ref, **{**kw, "relearn_lr": 1e-2})
    with pytest.raises(ConfigError, match="did you mean 'relearn_steps'"):
        ub.evaluate(str(tiny_victim), data=str(poisoned), relearn_step=3)
