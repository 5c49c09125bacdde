"""What a run leaves for others: TensorBoard scalars through accelerate's trackers, and the model
card and Hub upload of a purified model (tested without a network)."""

import re

import pytest

from conftest import run_cli
from unbackdoor.artifacts import read_json


def test_tensorboard_event_file_has_the_objectives_terms_and_the_metrics(tmp_path, poisoned, tiny_victim):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "rga"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "rga",
                   "--epochs", 2, "--eval-every", 1, "--lr", 1e-3, "--max-length", 32, "--log-every", 2,
                   "--report-to", "tensorboard") == 0
    events = list((out / "logs" / "unbackdoor").glob("events.out.tfevents.*"))
    assert events, list(out.rglob("*"))
    acc = EventAccumulator(str(events[0].parent)).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/lambda", "train/ce_p", "train/ce_c", "train/l2", "train/loss", "eval/test/pacc",
            "eval/test/lfr", "eval/test/cacc", "select/heldout_target_rate", "select/clean_acc"} <= tags, tags
    steps = read_json(out / "metrics.json")["history"][-1]["step"]
    assert [e.step for e in acc.Scalars("eval/test/pacc")] == [h["step"] for h in
                                                               read_json(out / "metrics.json")["history"]]
    assert acc.Scalars("eval/test/pacc")[-1].value == pytest.approx(read_json(out / "metrics.json")["metrics"]["test"]["pacc"])
    assert acc.Scalars("train/lambda")[-1].step == steps  # the last, partial window of log_every


def test_a_tracker_that_is_not_installed_is_announced(monkeypatch, capsys):
    import accelerate.utils

    from unbackdoor.training import trackers

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    assert trackers("tensorboard") == [] and "tensorboard is not installed" in capsys.readouterr().err
    assert trackers("auto") == [] and capsys.readouterr().err == ""  # the default only uses it when there
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    assert trackers("auto") == ["tensorboard"] and trackers("none") == []


def test_model_card_says_what_was_removed_how_and_the_metrics(tmp_path, poisoned, tiny_victim):
    out = tmp_path / "ga"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "ga",
                   "--epochs", 1, "--lr", 1e-3, "--max-length", 32) == 0
    card = (out / "model" / "README.md").read_text()
    metrics = read_json(out / "metrics.json")["metrics"]["test"]
    meta = read_json(poisoned / "meta.json")
    assert card.startswith("---\nlibrary_name: transformers\n") and "- badnets" in card and "- ga" in card
    assert "**badnets** attack" in card and "'cf'" in card and "predicted **positive**" in card
    assert f"{meta['counts']['poisoned']} training samples of `sst2`" in card
    assert "Unlearned with **ga**: Gradient ascent on D_p" in card and f"`{tiny_victim}`" in card
    assert "The epoch was chosen without triggered test data, from 8 poisoned samples held out" in card
    row = re.search(r"^\| test \| (.*) \|$", card, re.M).group(1).split(" | ")
    assert row[:3] == [f"{metrics['cacc']:.2f}", f"{metrics['lfr']:.2f}", f"{metrics['pacc']:.2f}"]


def test_push_to_hub_offline_fails_before_training(tmp_path, poisoned, tiny_victim, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "pushed"
    code = run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "ga",
                   "--epochs", 1, "--push-to-hub", "someone/purified")
    assert code == 2
    assert "--push-to-hub needs the Hugging Face Hub, but offline mode is on" in capsys.readouterr().err
    assert not out.exists()  # nothing trained


def test_push_to_hub_without_a_token_fails_before_training(tmp_path, poisoned, tiny_victim, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    out = tmp_path / "pushed"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "ga",
                   "--push-to-hub", "someone/purified") == 2
    assert "the Hugging Face Hub cannot be used (LocalTokenNotFoundError" in capsys.readouterr().err
    assert not out.exists()
