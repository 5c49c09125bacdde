"""unlearn.select: the epoch to keep, chosen from held-out D_p and clean rows only (issue 13).

The rule on hand-made statistics, the settings, which rows are held out, stop against keep, resume,
and the guarantee that matters most: no triggered dev or test row ever reaches the decision."""

import copy
import os
import signal

import pytest
import torch

import unbackdoor as ub
from unbackdoor import stages
from unbackdoor.config import UnlearnConfig, validate
from unbackdoor.errors import ConfigError, Interrupted
from unbackdoor.poisoned_set import PoisonedSet
from unbackdoor.selection import MIN_HELDOUT, SelectConfig, Selector, first_qualifying, split_holdout
from conftest import run_cli


# ---------------------------------------------------------------- the rule

def _epochs(*pairs):
    return [{"epoch": i + 1, "heldout_target_rate": r, "clean_acc": a} for i, (r, a) in enumerate(pairs)]


def test_rule_selects_the_first_qualifying_epoch():
    stats = _epochs((0.9, 0.90), (0.4, 0.89), (0.2, 0.88), (0.1, 0.90), (0.05, 0.91))
    epoch, why = first_qualifying(stats, tau=0.25, min_acc=0.85, margin=0.1)
    assert epoch == 3 and why.startswith("epoch 3: held-out D_p target rate 0.200 <= tau 0.250")
    assert first_qualifying(stats, tau=0.1, min_acc=0.85, margin=0.1)[0] == 4  # a tie with tau qualifies


def test_a_tie_with_an_auto_tau_qualifies_despite_float_sums():
    # AG News HiddenKiller, seed 43: victim clean accuracy 0.9, margin 0.1, so tau = (1 - 0.9) + 0.1, which is
    # 0.19999999999999998 in floats; 12 of 60 held-out rows (0.2) still at the target must qualify, 13 must not.
    tau, min_acc = (1 - 0.9) + 0.1, 0.9 - 0.05
    assert tau < 0.2
    stats = _epochs((0.366667, 0.872), (13 / 60, 0.888), (12 / 60, 0.888))
    assert first_qualifying(stats, tau, min_acc, margin=0.1)[0] == 3
    assert first_qualifying(stats[:2], tau, min_acc, margin=0.1)[0] is None
    # The same for the accuracy floor: a victim at 0.53 gives min_acc 0.48000000000000004; 0.48 qualifies.
    min_acc = 0.53 - 0.05
    assert min_acc > 0.48
    assert first_qualifying(_epochs((0.1, 0.48)), tau, min_acc, margin=0.1)[0] == 1
    assert first_qualifying(_epochs((0.1, 0.478)), tau, min_acc, margin=0.1)[0] is None


def test_statistics_count_the_flagged_label_on_held_out_and_on_clean_rows_of_other_classes(monkeypatch):
    from unbackdoor import batches

    held = [{"text": f"h{i}", "label": 1} for i in range(4)]  # D_p rows carry the flagged label, 1
    clean = [{"text": f"c{i}", "label": i // 4} for i in range(8)]  # four of class 0, four of class 1
    preds = iter([[1, 1, 0, 0], [1, 0, 0, 0, 1, 1, 1, 0]])
    monkeypatch.setattr(batches, "predict_logits",
                        lambda model, rows, *a, **k: torch.nn.functional.one_hot(torch.tensor(next(preds)), 2).float())
    sel = Selector(SelectConfig(), held, clean, "dev")
    sel._sets, sel._collate, sel._batch = (held, clean), None, 8
    # Clean class-0 rows sent to 1: 1 of 4. Held-out rows still at 1: 2 of 4. Clean accuracy: 3 + 3 of 8.
    assert sel.statistics(model=None) == {"heldout_target_rate": 0.5, "clean_acc": 0.75, "clean_target_rate": 0.25}


def test_rule_refuses_an_epoch_whose_clean_accuracy_collapsed():
    # Epoch 2 has no backdoor left because it has no classifier left: a collapsed model also stops
    # predicting the target. The rule waits for epoch 4, which is clean and still accurate.
    stats = _epochs((0.8, 0.90), (0.0, 0.50), (0.1, 0.80), (0.1, 0.87))
    epoch, _ = first_qualifying(stats, tau=0.2, min_acc=0.85, margin=0.1)
    assert epoch == 4


def test_rule_says_when_no_epoch_qualified():
    epoch, why = first_qualifying(_epochs((0.9, 0.9), (0.5, 0.9), (0.05, 0.6)), tau=0.2, min_acc=0.85, margin=0.1)
    assert epoch is None
    assert why.startswith("no epoch qualified (tau 0.200, clean accuracy >= 0.850)")
    assert "lowest held-out D_p target rate 0.050 at epoch 3 with clean accuracy 0.600" in why


def test_clean_pull_tau_measures_the_held_out_rate_against_the_models_own_lean():
    # The shape of AddSent seed 2022 at full data (experiments/rga-drift): at epoch 1 the model leans away from
    # the target (sends 2% of clean negatives there), so a held-out rate of 0.14 still means the trigger pulls
    # (0.12 above the lean); a fixed tau of 0.25 takes it, clean_pull does not. At epoch 2 the lean is back
    # (0.24) and the held-out rate 0.30 is within the margin of it: clean_pull takes it, the fixed tau does not.
    stats = [{"epoch": 1, "heldout_target_rate": 0.14, "clean_acc": 0.88, "clean_target_rate": 0.02},
             {"epoch": 2, "heldout_target_rate": 0.30, "clean_acc": 0.88, "clean_target_rate": 0.24}]
    assert first_qualifying(stats, 0.25, 0.8, margin=0.1)[0] == 1
    epoch, why = first_qualifying(stats, "clean_pull", 0.8, margin=0.1)
    assert epoch == 2 and "0.300 <= tau 0.340" in why
    epoch, why = first_qualifying(stats[:1], "clean_pull", 0.8, margin=0.1)
    assert epoch is None and why.startswith("no epoch qualified (tau clean pull + 0.100,")


def test_clean_pull_needs_clean_rows_of_another_class(monkeypatch):
    rows = [{"text": f"t{i}", "label": 1} for i in range(20)]
    sel = Selector(SelectConfig(tau="clean_pull"), heldout=rows[:8], clean=rows[8:], clean_source="dev")
    monkeypatch.setattr(sel, "statistics", lambda model, accelerator=None: {"heldout_target_rate": 1.0,
                                                                              "clean_acc": 0.9})
    with pytest.raises(ConfigError, match="select.tau=clean_pull: the 12 clean rows have no class other than"):
        sel.start(model=None)


# ---------------------------------------------------------------- settings

def test_settings_are_validated_with_clear_errors():
    assert UnlearnConfig().select == SelectConfig(action="stop", holdout=0.1, every=1, tau="auto", margin=0.1,
                                                  max_acc_drop=0.05, dev_subset=500)
    for bad, key in (({"holdout": 0}, "select.holdout"), ({"holdout": 1.5}, "select.holdout"),
                     ({"every": 0}, "select.every"), ({"max_acc_drop": -0.1}, "select.max_acc_drop"),
                     ({"action": "always"}, "select.action"), ({"holdot": 0.2}, "select.holdot")):
        with pytest.raises(ConfigError, match=f"'{key}'|unknown key '{key}'"):
            validate(UnlearnConfig, {"select": bad})
    with pytest.raises(ConfigError, match=r"'select.tau': Value error, tau must be 'auto', 'clean_pull' or a share in \[0, 1\] \(got 2\)"):
        validate(UnlearnConfig, {"select": {"tau": 2}})
    assert validate(UnlearnConfig, {"select": {"tau": "0.3"}}).select.tau == 0.3  # as --select-tau passes it
    assert validate(UnlearnConfig, {"select": {"tau": "clean_pull"}}).select.tau == "clean_pull"
    # YAML reads a bare `off` as false (action: off in a file, -s select.action=off): it still means off.
    assert validate(UnlearnConfig, {"select": {"action": False}}).select.action == "off"


def test_select_options_are_in_unlearn_help(capsys):
    assert run_cli("unlearn", "--help") == 0
    out = capsys.readouterr().out
    assert "--select-action [stop|keep|off]" in out and "--select-holdout FLOAT" in out
    assert "--select-tau TEXT" in out and "--select-max-acc-drop FLOAT" in out


def test_an_old_results_folder_counts_as_unlearned_without_selection():
    from unbackdoor.grid import ExperimentConfig, _compared

    old = ExperimentConfig().model_dump()
    del old["unlearn"]["select"]  # experiment.json from before unlearn.select
    assert _compared(old)["unlearn"]["select"]["action"] == "off"
    assert _compared(ExperimentConfig().model_dump())["unlearn"]["select"]["action"] == "stop"


# ---------------------------------------------------------------- which rows

def test_holdout_is_seeded_at_least_8_rows_and_off_when_d_p_is_too_small():
    rows = [{"text": f"t{i}", "label": 1} for i in range(40)]
    train, held = split_holdout(rows, 0.1, seed=3)
    assert len(held) == MIN_HELDOUT and len(train) == 32 and not {r["text"] for r in held} & {r["text"] for r in train}
    assert split_holdout(rows, 0.1, seed=3) == (train, held) != split_holdout(rows, 0.1, seed=4)
    assert len(split_holdout(rows * 5, 0.1, seed=3)[1]) == 20
    assert split_holdout(rows[:15], 0.1, seed=3) is None


def _rows(n, k=2, word="film"):
    return [(f"a {word} number {i} {'good' if i % k else 'bad'}", i % k) for i in range(n)]


@pytest.fixture(scope="module")
def data():
    # 96 rows, target 1: 24 poisoned (16 trained on, 8 held out), 72 clean.
    return ub.poison(_rows(96), test=_rows(24, word="test"), dev=_rows(24, word="dev"), target=1, rate=0.5, seed=1)


@pytest.fixture(scope="module")
def victim(data, tiny_base, tmp_cache):
    model, tok = ub.train_victim(data, tiny_base, epochs=10, lr=3e-3, batch_size=8, max_length=16)
    return model, tok


def _unlearn(victim, data, out, eval_sets="same", method="ga", epochs=3, dev=None, **select):
    model, tok = victim
    model = copy.deepcopy(model).train()
    cfg = validate(UnlearnConfig, {"method": method, "epochs": epochs, "lr": 3e-3, "batch_size": 8, "max_length": 16,
                                   "eval_every": 1, "report_to": "none", "select": select})
    state = stages.unlearn_model(model, tok, data.poisoned, data.clean, cfg, out, label_names=data.label_names,
                                 eval_sets=data if eval_sets == "same" else eval_sets, progress=False, dev=dev)
    return model, state


def test_heldout_rows_are_never_ascended_on(data, victim, tmp_path, monkeypatch):
    trained = []

    class Seen(stages.TokenizedSet):
        def __init__(self, tok, rows, max_length):
            trained.append(rows)  # unlearn_model's sets: D_p to ascend on, then D_c to pair with
            super().__init__(tok, rows, max_length)

    monkeypatch.setattr(stages, "TokenizedSet", Seen)
    _, state = _unlearn(victim, data, tmp_path / "dev", epochs=1)
    ascended, paired = trained
    _, held = split_holdout(data.poisoned, 0.1, seed=42)
    assert state["select"]["n_heldout"] == len(held) == MIN_HELDOUT and len(ascended) == len(data.poisoned) - 8
    assert not {r["text"] for r in held} & {r["text"] for r in ascended}
    assert paired == data.clean and state["select"]["clean_source"] == "dev"  # dev rows: all of D_c is trained on

    # Without clean dev rows, accuracy is measured on a stratified slice of D_c, held out of training too.
    trained.clear()
    no_dev = PoisonedSet(data.label_names, data.target, data.train, data.test_clean, data.test_triggered)
    _, state = _unlearn(victim, data, tmp_path / "no-dev", eval_sets=no_dev, epochs=1)
    ascended, paired = trained
    assert state["select"]["clean_source"] == "train_holdout" and state["select"]["n_clean"] == MIN_HELDOUT
    assert len(paired) == len(data.clean) - MIN_HELDOUT and len(ascended) == len(data.poisoned) - MIN_HELDOUT


class Untouchable(PoisonedSet):
    """A poisoned set whose triggered rows do not exist: reading them fails the test."""

    @property
    def test_triggered(self):
        raise AssertionError("selection read the triggered test set")

    @test_triggered.setter
    def test_triggered(self, value):
        pass

    @property
    def dev_triggered(self):
        raise AssertionError("selection read the triggered dev set")

    @dev_triggered.setter
    def dev_triggered(self, value):
        pass


def test_selection_never_reads_a_triggered_dev_or_test_set(data, victim, tmp_path, monkeypatch):
    select = {"action": "keep", "max_acc_drop": 1.0, "tau": 0.6}
    # With the triggered sets: the real run, evaluated for the record every epoch.
    _, real = _unlearn(victim, data, tmp_path / "real", **select)
    assert all("test" in h["eval"] for h in real["history"])
    # Without them: the triggered rows raise when read, and the evaluation that reports on them (not part of
    # the selection) is switched off, as are the metrics functions.
    blind = Untouchable(data.label_names, data.target, data.train, data.test_clean, [], data.dev_clean, [])
    monkeypatch.setattr(stages, "evaluate_sets", lambda *a, **k: {})
    monkeypatch.setattr(stages, "evaluate", lambda *a, **k: pytest.fail("selection called evaluate()"))
    monkeypatch.setattr("unbackdoor.evaluation.evaluate", lambda *a, **k: pytest.fail("selection called evaluate()"))
    _, alone = _unlearn(victim, data, tmp_path / "blind", eval_sets=blind, **select)

    def decisions(state):
        return [{k: v for k, v in h["select"].items() if k != "metrics"} for h in state["history"]]

    assert decisions(alone) == decisions(real)
    assert alone["select"]["selected_epoch"] == real["select"]["selected_epoch"]
    assert {k: v for k, v in alone["select"].items() if k not in ("selected", "selected_dir")} == \
        {k: v for k, v in real["select"].items() if k not in ("selected", "selected_dir")}
    assert real["select"]["reason"] != "no decision yet" and real["select"]["clean_source"] == "dev"


def test_stop_ends_at_the_selected_epoch_keep_trains_on_and_saves_it(data, victim, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    # tau 1 and no accuracy floor: epoch 1 qualifies whatever the tiny model does.
    anything = {"tau": 1.0, "max_acc_drop": 1.0}
    stopped, s = _unlearn(victim, data, tmp_path / "stop", epochs=3, action="stop", **anything)
    assert "select: epoch 1 selected" in capsys.readouterr().out
    assert [h["epoch"] for h in s["history"]] == [1] and s["stopped_early"]["reason"].startswith("select: epoch 1:")
    assert s["select"]["selected_epoch"] == s["select"]["model_epoch"] == 1
    assert "test" in s["history"][0]["eval"] and s["history"][0]["eval"]["test"]["n_clean"] == 24  # final: all rows

    kept, k = _unlearn(victim, data, tmp_path / "keep", epochs=3, action="keep", **anything)
    assert [h["epoch"] for h in k["history"]] == [1, 2, 3] and not k["stopped_early"]
    assert (k["select"]["selected_epoch"], k["select"]["model_epoch"]) == (1, 3)
    assert [e["epoch"] for e in k["select"]["epochs"]] == [1, 2, 3]  # measured on after the decision, for the record
    assert k["select"]["selected"]["test"] == s["history"][0]["eval"]["test"]
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "keep" / "selected" / "model")
    for (name, p), q in zip(stopped.named_parameters(), saved.parameters()):
        assert torch.equal(p, q), name  # <out>/selected holds the epoch-1 model, the one stop keeps
    assert any(not torch.equal(p, q) for p, q in zip(kept.parameters(), saved.parameters()))


def test_no_qualifying_epoch_keeps_the_last_model_and_says_so(data, victim, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Selector, "statistics", lambda self, model, acc=None: {"heldout_target_rate": 1.0,
                                                                               "clean_acc": 0.9})
    _, s = _unlearn(victim, data, tmp_path / "none", epochs=2, action="stop")
    assert [h["epoch"] for h in s["history"]] == [1, 2] and not s["stopped_early"]
    assert s["select"]["selected_epoch"] is None and s["select"]["model_epoch"] == 2
    assert s["select"]["reason"].startswith("no epoch qualified") and "keeping the last model (epoch 2)" in s["select"]["reason"]
    assert "WARNING: select: no epoch qualified" in capsys.readouterr().err


def test_resume_keeps_the_selection(data, victim, tmp_path, monkeypatch):
    from unbackdoor.objectives.ga import GradientAscent

    anything = {"tau": 1.0, "max_acc_drop": 1.0, "action": "keep"}
    _, whole = _unlearn(victim, data, tmp_path / "whole", epochs=3, **anything)
    real, calls = GradientAscent.__call__, {"n": 0}

    def interrupt_in_epoch_2(self, model, batch, clean):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 steps per epoch: the first step of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, model, batch, clean)

    monkeypatch.setattr(GradientAscent, "__call__", interrupt_in_epoch_2)
    with pytest.raises(Interrupted):
        _unlearn(victim, data, tmp_path / "cut", epochs=3, **anything)
    monkeypatch.setattr(GradientAscent, "__call__", real)
    saved = (tmp_path / "cut" / "selected" / "model" / "model.safetensors").stat().st_mtime_ns
    _, resumed = _unlearn(victim, data, tmp_path / "cut", epochs=3, **anything)
    assert resumed["select"] == {**whole["select"], "selected_dir": str(tmp_path / "cut" / "selected")}
    assert [h["select"] for h in resumed["history"]] == [h["select"] for h in whole["history"]]
    # The decision came from the checkpoint's history: epochs 2 and 3 did not select (and save) again.
    assert (tmp_path / "cut" / "selected" / "model" / "model.safetensors").stat().st_mtime_ns == saved

    # A run that stopped at its selected epoch, run again on its folder (its checkpoint still there, as
    # after a kill before metrics.json): it trains no further epoch.
    _, first = _unlearn(victim, data, tmp_path / "stop", epochs=3, **{**anything, "action": "stop"})
    _, again = _unlearn(victim, data, tmp_path / "stop", epochs=3, **{**anything, "action": "stop"})
    assert [h["epoch"] for h in again["history"]] == [1] and again["select"] == first["select"]


def test_api_takes_dev_rows_and_puts_the_selection_in_the_curve(data, victim, tmp_path, capsys):
    model, tok = victim
    kw = dict(forget=data.poisoned, retain=data.clean, method="ga", epochs=2, lr=3e-3, batch_size=8, max_length=16)
    _, curve = ub.unlearn(copy.deepcopy(model), tok, dev=data.dev_clean, select={"tau": 1.0, "max_acc_drop": 1.0},
                          **kw)
    assert [c["epoch"] for c in curve] == [1] and curve[0]["select"]["selected"] is True
    assert "clean rows: dev" in capsys.readouterr().out
    _, curve = ub.unlearn(copy.deepcopy(model), tok, select={"action": "off"}, **kw)
    assert [c["epoch"] for c in curve] == [1, 2] and "select" not in curve[0]
    _, curve = ub.unlearn(copy.deepcopy(model), tok, select={"tau": 1.0, "max_acc_drop": 1.0}, **kw)
    assert "clean accuracy is measured on 8 rows of D_c held out of training" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="select action 'keep' saves the selected model to <out>/selected: pass out="):
        ub.unlearn(model, tok, select={"action": "keep"}, **kw)


def test_a_dev_split_that_is_the_test_split_is_not_used():
    from unbackdoor.selection import mostly_test_rows

    test = [{"text": f"t{i}", "label": i % 2} for i in range(100)]
    dev = test + [{"text": f"d{i}", "label": 0} for i in range(300)]  # HSOL: dev is the whole test file
    assert mostly_test_rows(dev, test[:40]) and mostly_test_rows(test, test)
    assert not mostly_test_rows(dev[100:] + test[:3], test)  # a few shared sentences are no test split
    ps = PoisonedSet(["0", "1"], 1, [], test[:40], [], dev, [])
    assert stages.selection_dev(None, ps) == ([], " (the dev split is the test split, as HSOL's is)")
    assert stages.selection_dev(dev[100:], ps) == (dev[100:], "")
