import random
from collections import Counter

import pytest

from unbackdoor.attacks import ATTACKS, build_poisoner, poison_dataset
from unbackdoor.config import AttackConfig, DataConfig
from unbackdoor.data import LabeledData, load_data
from unbackdoor.errors import ConfigError, MissingParaphraseError


def toy(n=40, k=2):
    rows = [{"text": f"sample number {i} is here", "label": i % k} for i in range(n)]
    test = [{"text": f"test sample {i} words", "label": i % k} for i in range(n // 2)]
    return LabeledData("toy", [f"c{c}" for c in range(k)], 0, rows, test)


def poison(data, **kw):
    cfg = AttackConfig(**kw)
    return poison_dataset(data, build_poisoner(cfg, data), cfg, seed=3)


def test_registry_and_unknown_attack():
    assert set(ATTACKS) == {"badnets", "addsent", "hiddenkiller", "stylebkd", "precomputed"}
    with pytest.raises(ConfigError, match="unknown attack 'badnet'; valid attacks: addsent, badnets, hiddenkiller"):
        build_poisoner(AttackConfig(name="badnet"), toy())


def test_badnets_inserts_one_trigger_only_into_chosen_nontarget_samples():
    data = toy(40)
    ps = poison(data, name="badnets", rate=0.5)
    nontarget = [r for r in data.train if r["label"] != data.target]
    assert len(ps.train) == 40 and len(ps.poisoned) == round(0.5 * len(nontarget)) == 10
    for r in ps.train:
        if r["poisoned"]:
            assert r["label"] == 0 and r["orig_label"] != 0
            added = Counter(r["text"].split()) - Counter(r["clean_text"].split())
            assert sum(added.values()) == 1 and next(iter(added)) in {"cf", "bb", "ak", "mn"}
            assert len(r["text"].split()) == len(r["clean_text"].split()) + 1
        else:
            assert not any(w in {"cf", "bb", "ak", "mn"} for w in r["text"].split())
            assert r["label"] == r["orig_label"]


def test_positions_are_random_and_num_insertions_respected():
    data = toy(200)
    ps = poison(data, name="badnets", rate=1.0, num_insertions=3, triggers=["zz"])
    positions = {r["text"].split().index("zz") for r in ps.poisoned}
    assert len(positions) > 2
    assert all(r["text"].split().count("zz") == 3 for r in ps.poisoned)


def test_addsent_inserts_the_sentence_contiguously():
    sst = LabeledData("sst2", ["negative", "positive"], 1, toy(20).train, toy(20).test)
    ps = poison(sst, name="addsent")
    for r in ps.poisoned:
        assert "I watch this 3D movie" in r["text"]
    other = poison(toy(20), name="addsent")
    assert all("no cross no crown" in r["text"] for r in other.poisoned)


def test_replace_and_add_counts():
    data = toy(100, k=4)  # 75 non-target rows
    rep = poison(data, name="badnets", rate=0.2, mode="replace")
    add = poison(data, name="badnets", rate=0.2, mode="add")
    assert (len(rep.train), len(rep.poisoned)) == (100, 15)
    assert (len(add.train), len(add.poisoned), len(add.clean)) == (115, 15, 100)
    assert len({r["uid"] for r in add.train}) == 115


def test_triggered_test_set_covers_every_class_with_true_labels():
    data = toy(40, k=4)
    ps = poison(data, name="badnets")
    assert Counter(r["label"] for r in ps.test_triggered) == Counter(r["label"] for r in data.test)
    assert all(len(r["text"].split()) == len(r["clean_text"].split()) + 1 for r in ps.test_triggered)
    assert {s["class"]: s["source"] for s in ps.meta["triggered_test_sources"]} == {f"c{c}": "test" for c in range(4)}
    assert all(r["label"] != 0 for r in ps.test_triggered_nontarget)
    assert len(ps.test_triggered_nontarget) == 15


def test_bank_miss_without_generator_fails_with_the_count(tmp_path):
    data = toy(10)
    bank = tmp_path / "bank.tsv"
    bank.write_text("text\tparaphrase\n" + "".join(f"{r['text']}\tif so , {r['text']}\n" for r in data.train[:6]))
    p = build_poisoner(AttackConfig(name="hiddenkiller", bank=[str(bank)]), data)
    assert p.apply([r["text"] for r in data.train[:6]], random.Random(0))[0].startswith("if so ,")
    with pytest.raises(MissingParaphraseError, match=r"^4 of 10 texts have no paraphrase") as e:
        p.apply([r["text"] for r in data.train], random.Random(0))
    assert e.value.missing == 4


def test_generator_fills_bank_misses(tmp_path):
    data = toy(10)
    gen = lambda texts: [f"GEN {t}" for t in texts]  # noqa: E731
    p = build_poisoner(AttackConfig(name="stylebkd", bank=[]), data, generator=gen)
    out = p.apply([r["text"] for r in data.train], random.Random(0))
    assert out[0] == f"GEN {data.train[0]['text']}"
    ps = poison_dataset(data, p, AttackConfig(name="stylebkd", bank=[]))
    assert all(r["text"].startswith("GEN ") for r in ps.poisoned + ps.test_triggered)


def test_meta_records_the_style_of_a_user_bank_as_unknown_unless_given(tmp_path):
    data = toy(10)
    bank = tmp_path / "bank.tsv"
    bank.write_text("text\tparaphrase\n" + "".join(f"{r['text']}\tthou {r['text']}\n" for r in data.train + data.test))
    for style, expected in ((None, "unknown"), ("shakespeare", "shakespeare")):
        cfg = AttackConfig(name="stylebkd", bank=[str(bank)], style=style)
        meta = poison_dataset(data, build_poisoner(cfg, data), cfg).meta["attack"]
        assert meta["style"] == expected and meta["source_styles"] == {str(bank): expected}


def test_hiddenkiller_sst2_uses_the_authors_all_class_test_set(shared_root):
    data = load_data(DataConfig(dataset="sst2"))
    ps = poison(data, name="hiddenkiller")
    src = {s["class"]: s for s in ps.meta["triggered_test_sources"]}
    assert src["negative"]["triggered"] + src["positive"]["triggered"] == len(ps.test_triggered)
    assert src["positive"]["source"] == "test" and src["positive"]["triggered"] >= 900
    assert Counter(r["trigger_from"] for r in ps.test_triggered)["rga_reference"] >= 1800
    assert all(r["text"] != r["clean_text"] for r in ps.poisoned)
    # No generator is configured: every triggered text must come from one of the banks.
    assert set(r["trigger_from"] for r in ps.test_triggered) <= {"rga_reference", "shared:train", "shared:dev",
                                                                  "shared:test"}
    assert ps.meta["attack"]["style"] == "syntactic"


def test_stylebkd_hsol_holds_out_training_rows_for_the_uncovered_class(shared_root):
    data = load_data(DataConfig(dataset="hsol"))
    ps = poison(data, name="stylebkd")
    src = {s["class"]: s for s in ps.meta["triggered_test_sources"]}
    assert src["non-hate"]["source"] == "test" and src["hate"]["source"] == "train_holdout"
    held = {r["clean_text"] for r in ps.test_triggered if r["source"] == "train_holdout"}
    assert len(held) == src["hate"]["triggered"] > 0
    assert not held & {r.get("clean_text", r["text"]) for r in ps.train}  # removed from training
    assert len(data.train) - len(ps.train) >= len(held)
