"""End-to-end through the CLI: real data, real transformers models, small sizes."""

import json
from pathlib import Path

import pytest

from unbackdoor.artifacts import read_json, read_jsonl
from conftest import _train_args, run_cli


def test_poison_folder_contents(poisoned):
    meta = read_json(poisoned / "meta.json")
    train = read_jsonl(poisoned / "train.jsonl")
    assert meta["counts"]["poisoned"] == sum(r["poisoned"] for r in train) > 0
    assert meta["config"]["attack"]["name"] == "badnets" and "versions" in meta and "git_revision" in meta
    trig = read_jsonl(poisoned / "test_triggered.jsonl")
    assert {r["label"] for r in trig} == {0, 1}
    assert len(read_jsonl(poisoned / "test_triggered_nontarget.jsonl")) == sum(r["label"] == 0 for r in trig)


def test_train_saves_hf_model_and_provenance(tiny_victim):
    from transformers import AutoModelForSequenceClassification

    res = read_json(tiny_victim / "metrics.json")
    assert res["config"]["lr"] == 1e-3 and res["versions"]["torch"].startswith("2.13")
    m = res["metrics"]["test"]
    # The numbers describe the saved test sets: each confusion row holds that class's rows, and CACC, PACC
    # and LFR (target positive) are read off the matrices.
    cc, ct = m["confusion_clean"], m["confusion_triggered"]
    for name, cm in (("test_clean", cc), ("test_triggered", ct)):
        labels = [r["label"] for r in read_jsonl(Path(res["poisoned_set"]) / f"{name}.jsonl")]
        assert [sum(row) for row in cm] == [labels.count(0), labels.count(1)] and len(labels) == 60
    assert m["cacc"] == pytest.approx(100 * (cc[0][0] + cc[1][1]) / 60)
    assert m["pacc"] == pytest.approx(100 * (ct[0][0] + ct[1][1]) / 60)
    assert m["lfr"] == pytest.approx(100 * ct[0][1] / sum(ct[0]))
    assert (tiny_victim / "model" / "model.safetensors").is_file()
    assert AutoModelForSequenceClassification.from_pretrained(tiny_victim / "model").config.num_labels == 2
    log = read_jsonl(tiny_victim / "loss_log.jsonl")
    assert len(log) == 10 and all("loss" in r for r in log)  # 160 rows / 16 per batch
    assert not (tiny_victim / "checkpoint").exists()


@pytest.mark.parametrize("method", ["ga", "npo", "rga"])
def test_unlearn_methods_run_and_log(tmp_path, poisoned, tiny_victim, method):
    out = tmp_path / method
    # select keep: every epoch runs (stop, the default, may end after epoch 1), and is checked.
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", method,
                   "--epochs", 2, "--eval-every", 1, "--lr", 1e-3, "--max-length", 48, "--select-action", "keep") == 0
    res = read_json(out / "metrics.json")
    assert [c["epoch"] for c in res["curve"]] == [1, 2]
    assert res["n_poisoned"] == read_json(poisoned / "meta.json")["counts"]["poisoned"]  # D_p as flagged
    sel = res["select"]
    assert [e["epoch"] for e in sel["epochs"]] == [1, 2] and sel["n_heldout"] == 8 and sel["reason"]
    assert sel["clean_source"] == "dev" and sel["n_clean"] == 500  # SST-2's dev split, a stratified 500
    log = read_jsonl(out / "loss_log.jsonl")
    assert all({"ce_p", "ce_c", "loss"} <= set(r) for r in log)
    if method == "rga":
        assert all(0 < r["lambda"] <= 1 and r["kl"] >= 0 and r["l2"] > 0 for r in log)
        assert log[0]["lambda"] > log[-1]["lambda"]  # drifts away from f_p
    if method == "ga":
        assert log[-1]["ce_p"] > log[0]["ce_p"]  # ascent on D_p


def test_retrain_uses_the_victims_settings(tmp_path, poisoned, tiny_victim):
    out = tmp_path / "retrain"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out,
                   "--method", "retrain") == 0
    res = read_json(out / "metrics.json")
    meta = read_json(poisoned / "meta.json")
    assert res["kind"] == "retrain" and res["n_train"] == meta["counts"]["clean"]
    assert res["config"]["lr"] == 1e-3 and res["config"]["max_length"] == 48


def test_early_stopping_reports_the_epoch(tmp_path, poisoned, tiny_victim):
    out = tmp_path / "es"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "rga",
                   "--epochs", 30, "--lr", 1e-3, "--rga-alpha", 50, "--early-stop-criterion", "lambda",
                   "--early-stop-threshold", 0.9, "--early-stop-patience", 3, "--max-length", 48,
                   "--select-action", "off",  # the lambda criterion's stop, not the selection's
                   # The joint step moves this tiny, degenerate victim off f_p within a few steps; the separate
                   # step's lambda-sized ascent takes longer than 30 epochs of 2 steps, and what is tested here
                   # is how a stop is reported, not how soon it comes.
                   "--rga-ascent-step", "joint") == 0
    res = read_json(out / "metrics.json")
    assert res["stopped_early"] and res["stopped_early"]["epoch"] < 30
    assert res["stopped_early"]["reason"].startswith("lambda < 0.9") and res["select"] is None
    assert res["curve"][-1]["epoch"] == res["stopped_early"]["epoch"]


def test_unlearn_from_a_user_flag_file(tmp_path, poisoned, tiny_victim):
    rows = read_jsonl(poisoned / "train.jsonl")
    flag = tmp_path / "flags.jsonl"
    flag.write_text("\n".join(json.dumps({"text": r["text"], "label": r["label"], "poisoned": int(r["poisoned"])})
                              for r in rows))
    out = tmp_path / "from-file"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", flag, "--eval-set", poisoned,
                   "--out", out, "--method", "ga", "--epochs", 1, "--max-length", 48) == 0
    res = read_json(out / "metrics.json")
    assert res["n_poisoned"] == sum(r["poisoned"] for r in rows)
    assert res["select"]["clean_source"] == "dev"  # the clean dev rows of --eval-set


def test_select_stops_at_the_selected_epoch_through_the_cli(tmp_path, poisoned, tiny_victim, capsys):
    out = tmp_path / "sel"
    # tau 1 with no accuracy floor: epoch 1 qualifies, so the default action (stop) ends there.
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "ga",
                   "--epochs", 3, "--lr", 1e-3, "--max-length", 48, "--select-tau", "1",
                   "--select-max-acc-drop", 1) == 0
    assert "select: epoch 1 selected" in capsys.readouterr().out
    res = read_json(out / "metrics.json")
    assert res["select"]["selected_epoch"] == res["select"]["model_epoch"] == res["stopped_early"]["epoch"] == 1
    assert [c["epoch"] for c in res["curve"]] == [1] and res["metrics"]["test"]["n_clean"] == 60
    assert (out / "model" / "model.safetensors").is_file() and not (out / "selected").exists()


def test_real_minilm_victim_learns_the_backdoor(tmp_path, shared_root, tmp_cache):
    """Acceptance: SST-2 BadNets (50% of negatives poisoned) + the embedded MiniLM -> LFR >= 90 and
    CACC >= 75, on a 2,000-row training subset (2 epochs at lr 1e-4 with 10% warm-up, ~2 min on 2 cores;
    measured here: CACC 76.75, LFR 100 on 400 test rows). Full data: see the issue note."""
    p, v = tmp_path / "p", tmp_path / "v"
    assert run_cli("poison", "--out", p, "--train-size", 2000, "--test-size", 400, "--seed", 7) == 0
    assert run_cli("train", "--poisoned-set", p, "--out", v, "--epochs", 2, "--lr", 1e-4, "--max-length", 64,
                   "--warmup-ratio", 0.1) == 0
    m = read_json(v / "metrics.json")["metrics"]["test"]
    assert m["lfr"] >= 90 and m["cacc"] >= 75, m


def test_interrupt_mid_epoch_then_resume_matches_uninterrupted(tmp_path, poisoned, tiny_base, monkeypatch):
    import os
    import signal

    from unbackdoor.objectives.ce import CrossEntropy

    ref = tmp_path / "ref"
    assert run_cli(*_train_args(poisoned, ref, tiny_base)) == 0
    out = tmp_path / "run"
    calls = {"n": 0}
    real_call = CrossEntropy.__call__

    def interrupted_call(self, model, batch, clean):
        calls["n"] += 1
        if calls["n"] == 7:  # a real SIGINT, as from Ctrl-C, in the middle of epoch 1
            os.kill(os.getpid(), signal.SIGINT)
        return real_call(self, model, batch, clean)

    monkeypatch.setattr(CrossEntropy, "__call__", interrupted_call)
    assert run_cli(*_train_args(poisoned, out, tiny_base)) == 130
    state = read_json(out / "checkpoint" / "loop_state.json")
    assert (state["epoch"], state["batch"], state["step"]) == (0, 7, 7) and not (out / "metrics.json").exists()
    monkeypatch.setattr(CrossEntropy, "__call__", real_call)
    assert run_cli(*_train_args(poisoned, out, tiny_base)) == 0
    a, b = read_json(ref / "metrics.json"), read_json(out / "metrics.json")
    assert a["metrics"] == b["metrics"]
    la, lb = read_jsonl(ref / "loss_log.jsonl"), read_jsonl(out / "loss_log.jsonl")
    assert [r["step"] for r in lb] == list(range(1, 81))
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-5)
