"""Paths a user takes that the project's own experiments do not: a victim trained elsewhere, ReTrain
from a flag file, LoRA options, the authors'-code settings, devices and mixed precision."""

import json
import shutil

import pytest

from unbackdoor.artifacts import read_json, read_jsonl, write_json
from conftest import run_cli


def unlearn(model, poisoned, out, *extra):
    return run_cli("unlearn", "--model", model, "--poisoned-set", poisoned, "--out", out, "--epochs", 1,
                   "--lr", 1e-3, "--max-length", 32, "--eval-batch-size", 64, *extra)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, tiny_victim):
    """A victim from elsewhere: plain save_pretrained, no unbackdoor.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("foreign") / "victim"
    AutoModelForSequenceClassification.from_pretrained(tiny_victim / "model").save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_victim / "model").save_pretrained(out)
    assert not (out / "unbackdoor.json").exists()
    return out


def named(foreign, folder, name_or_path):
    """The victim with `_name_or_path` in its config.json, as transformers 4 wrote it."""
    shutil.copytree(foreign, folder)
    cfg = read_json(folder / "config.json")
    write_json(folder / "config.json", {**cfg, "_name_or_path": str(name_or_path)})
    return folder


def flag_file(poisoned, path):
    rows = read_jsonl(poisoned / "train.jsonl")
    path.write_text("\n".join(json.dumps({"text": r["text"], "label": r["label"], "poisoned": int(r["poisoned"])})
                              for r in rows))
    return path


# ---------------------------------------------------------------- theta_base of a victim from elsewhere

def check_anchored(out, base, source):
    res = read_json(out / "metrics.json")
    assert (res["base_model"], res["base_model_source"]) == (str(base), source)
    # The first step's L2 is taken before any update, at theta = the victim: 0 if anchored to the victim.
    assert read_jsonl(out / "loss_log.jsonl")[0]["l2"] > 0.1
    assert read_json(out / "model" / "unbackdoor.json")["base_model"] == str(base)


def test_theta_base_of_a_foreign_victim_from_the_option(tmp_path, poisoned, foreign, tiny_base):
    out = tmp_path / "u"
    assert unlearn(foreign, poisoned, out, "--base-model", tiny_base) == 0
    check_anchored(out, tiny_base, "option")


def test_theta_base_of_a_foreign_victim_from_its_config(tmp_path, poisoned, foreign, tiny_base):
    victim = named(foreign, tmp_path / "victim", tiny_base)
    out = tmp_path / "u"
    assert unlearn(victim, poisoned, out) == 0
    check_anchored(out, tiny_base, "config._name_or_path")


def test_theta_base_unknown_or_the_victim_itself_is_refused(tmp_path, poisoned, foreign, capsys):
    out = tmp_path / "u"
    assert unlearn(foreign, poisoned, out) == 2
    err = capsys.readouterr().err
    assert "theta_base" in err and "is unknown" in err and "--base-model NAME_OR_PATH" in err and "rga.beta=0" in err
    assert len(err.strip().splitlines()) == 1
    itself = named(foreign, tmp_path / "itself", tmp_path / "itself")  # re-saved into the folder it came from
    assert unlearn(itself, poisoned, out) == 2
    assert "--base-model NAME_OR_PATH" in capsys.readouterr().err
    assert unlearn(foreign, poisoned, out, "--base-model", foreign) == 2
    assert "is the victim itself" in capsys.readouterr().err
    assert not out.exists()
    # Without the L2 term no base is needed, and none is recorded.
    assert unlearn(foreign, poisoned, out, "-s", "rga.beta=0") == 0
    assert read_json(out / "metrics.json")["base_model"] is None


def test_theta_base_from_an_adapter_config_and_unloadable_names_skipped(tmp_path, foreign, tiny_base):
    from unbackdoor.errors import BaseModelError
    from unbackdoor.models import resolve_base

    victim = named(foreign, tmp_path / "victim", "/home/someone/checkpoints/bert-ft")  # not on this machine
    with pytest.raises(BaseModelError, match="names no loadable base model"):
        resolve_base(victim)
    write_json(victim / "adapter_config.json", {"base_model_name_or_path": str(tiny_base)})
    assert resolve_base(victim) == (str(tiny_base), "adapter.base_model_name_or_path")
    assert resolve_base(victim, "minilm") == ("minilm", "option")


def test_loss_detector_needs_the_base_of_a_foreign_victim(tmp_path, poisoned, foreign, tiny_base, capsys):
    out = tmp_path / "flags.jsonl"
    args = ["detect", "--model", foreign, "--poisoned-set", poisoned, "--out", out, "--detector", "loss",
            "--max-length", 32]
    assert run_cli(*args) == 2  # not a silent fine-tuning of MiniLM
    assert "--base-model NAME_OR_PATH" in capsys.readouterr().err and not out.exists()
    assert run_cli(*args, "--base-model", tiny_base) == 0
    info = read_json(tmp_path / "flags.metrics.json")["info"]
    assert (info["base_model"], info["base_model_source"]) == (str(tiny_base), "option")


# ---------------------------------------------------------------- ReTrain

@pytest.fixture(scope="module")
def retrain_run(tmp_path_factory, poisoned, tiny_victim):
    tmp = tmp_path_factory.mktemp("rt")
    out = tmp / "retrain"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", flag_file(poisoned, tmp / "flags.jsonl"),
                   "--eval-set", poisoned, "--out", out, "--method", "retrain", "--seed", 5) == 0
    return out


def test_retrain_from_a_flag_file_evaluates_on_the_eval_set_with_the_seed(retrain_run, poisoned):
    res = read_json(retrain_run / "metrics.json")
    m = res["metrics"]["test"]
    assert m["n_clean"] == len(read_jsonl(poisoned / "test_clean.jsonl")) > 0
    assert m["n_triggered"] == len(read_jsonl(poisoned / "test_triggered.jsonl"))
    assert res["config"]["seed"] == 5 and res["config"]["lr"] == 1e-3  # the seed given, the victim's settings
    assert res["n_train"] == sum(1 for r in read_jsonl(poisoned / "train.jsonl") if not r["poisoned"])


def test_retrain_of_a_foreign_victim(tmp_path, poisoned, foreign, tiny_base, capsys):
    out = tmp_path / "rt"
    assert run_cli("unlearn", "--model", foreign, "--poisoned-set", poisoned, "--out", out,
                   "--method", "retrain") == 2
    err = capsys.readouterr().err
    assert "no unbackdoor.json" in err and "--base-model NAME_OR_PATH" in err and not out.exists()
    assert run_cli("unlearn", "--model", foreign, "--poisoned-set", poisoned, "--out", out, "--method", "retrain",
                   "--base-model", tiny_base, "--epochs", 1, "--lr", 1e-3, "--max-length", 32) == 0
    cfg = read_json(out / "metrics.json")["config"]
    assert (cfg["model"], cfg["epochs"], cfg["max_length"]) == (str(tiny_base), 1, 32)


def test_evaluate_with_retrain_writes_delta_pacc(tmp_path, poisoned, tiny_victim, retrain_run):
    from unbackdoor.artifacts import write_json
    from unbackdoor.evaluation import compute_metrics

    # A usable ReTrain reference (hand-made metrics: 30 rows per class, mostly right).
    ref = compute_metrics([0] * 30 + [1] * 30, [0] * 25 + [1] * 5 + [1] * 27 + [0] * 3,
                          [0] * 30 + [1] * 30, [0] * 22 + [1] * 8 + [1] * 26 + [0] * 4, 1, ["negative", "positive"])
    good = tmp_path / "retrain-good"
    write_json(good / "metrics.json", {"metrics": {"test": ref}})
    out = tmp_path / "eval.json"
    assert run_cli("evaluate", "--model", tiny_victim, "--poisoned-set", poisoned, "--retrain", good,
                   "--out", out) == 0
    m = read_json(out)["metrics"]["test"]
    assert m["delta_pacc"] == pytest.approx(abs(m["pacc"] - ref["pacc"]))
    assert m["signed_delta_pacc"] == pytest.approx(m["pacc"] - ref["pacc"])
    assert m["pacc"] == pytest.approx(read_json(tiny_victim / "metrics.json")["metrics"]["test"]["pacc"])
    assert m["verdict"] in ("backdoor", "neutralised", "shifted (partly)", "shifted (fully)")
    # The tiny ReTrain predicts one class for every row: no dPACC against it, and no verdict.
    real = read_json(retrain_run / "metrics.json")["metrics"]["test"]
    assert real["degenerate"]
    assert run_cli("evaluate", "--model", tiny_victim, "--poisoned-set", poisoned, "--retrain", retrain_run,
                   "--out", out) == 0
    m = read_json(out)["metrics"]["test"]
    assert "delta_pacc" not in m and m["retrain_degenerate"] and m["verdict"] == "no verdict"


# ---------------------------------------------------------------- options

def test_lora_target_modules_option_takes_a_list(tmp_path, poisoned, tiny_base, capsys):
    out = tmp_path / "lora"
    args = ["train", "--poisoned-set", poisoned, "--out", out, "--model", tiny_base, "--epochs", 1, "--lr", 1e-3,
            "--batch-size", 16, "--max-length", 32, "--lora-enabled", "--lora-target-modules"]
    assert run_cli(*args, "q_proj,k_proj") == 2  # Llama names; BERT calls them query, key
    err = capsys.readouterr().err
    assert "LoRA target modules ['q_proj', 'k_proj'] not found in the model" in err and len(err.splitlines()) == 1
    assert run_cli(*args, "query,key") == 0
    assert read_json(out / "metrics.json")["config"]["lora"]["target_modules"] == ["query", "key"]
    assert set(read_json(out / "adapter" / "adapter_config.json")["target_modules"]) == {"query", "key"}


@pytest.fixture(scope="module")
def default_rga_log(tmp_path_factory, poisoned, tiny_victim):
    out = tmp_path_factory.mktemp("rga") / "default"
    assert unlearn(tiny_victim, poisoned, out, "--seed", 3) == 0
    return read_jsonl(out / "loss_log.jsonl")


@pytest.mark.parametrize("setting", ["kl_direction=poisoned_current", "l2=per_tensor", "lambda_mode=sample"])
def test_authors_code_settings_run(tmp_path, poisoned, tiny_victim, default_rga_log, setting):
    out = tmp_path / "u"
    assert unlearn(tiny_victim, poisoned, out, "--seed", 3, "-s", f"rga.{setting}") == 0
    key, value = setting.split("=")
    assert read_json(out / "metrics.json")["config"]["rga"][key] == value
    log = read_jsonl(out / "loss_log.jsonl")
    assert all(0 < r["lambda"] <= 1 and r["kl"] >= 0 and r["l2"] >= 0 for r in log)
    # Step 1 sees the same batch, dropout and weights as the default run: only the setting differs.
    first, ref = log[0], default_rga_log[0]
    if key == "l2":  # a sum of per-tensor norms is larger than the norm of them all together
        assert first["l2"] > 2 * ref["l2"]
    else:
        assert first["l2"] == ref["l2"]
    if key == "kl_direction":
        assert first["kl"] != ref["kl"]
    if key == "lambda_mode":  # mean of exp(-a KL_i) >= exp(-a mean KL_i) (Jensen), same KLs
        assert first["kl"] == ref["kl"] and first["lambda"] >= ref["lambda"]


def test_early_stop_on_target_rate_stops_the_run(tmp_path, poisoned, tiny_victim):
    out = tmp_path / "es"
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "ga",
                   "--epochs", 30, "--lr", 5e-3, "--max-length", 32, "--batch-size", 16,
                   "--early-stop-criterion", "target_rate", "--early-stop-threshold", 0.2,
                   "--early-stop-patience", 2, "--select-action", "off") == 0  # this criterion's stop, not select's
    res = read_json(out / "metrics.json")
    assert res["stopped_early"] and "target_rate < 0.2 for 2 consecutive steps" in res["stopped_early"]["reason"]
    assert res["stopped_early"]["epoch"] < 30 and res["curve"][-1]["epoch"] == res["stopped_early"]["epoch"]
    log = read_jsonl(out / "loss_log.jsonl")
    assert [r["target_rate"] < 0.2 for r in log[-3:]] == [False, True, True] or len(log) == 2


# ---------------------------------------------------------------- devices

@pytest.fixture
def fresh_accelerate():
    # Accelerate keeps one state (device, mixed precision) per process; a real run is one command per process.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_every_forward_pass_runs_on_the_accelerators_device_and_precision(tmp_path, poisoned, tiny_victim,
                                                                          monkeypatch, fresh_accelerate):
    """On a CPU: bf16 autocast stands in for the accelerator (a forward pass made before
    accelerator.prepare runs without it). On a GPU the same test checks the device itself."""
    import torch

    from unbackdoor import models, stages as pipeline

    expect = {"autocast": False}
    seen = []

    def check(module, args, kwargs):
        device = next(module.parameters()).device
        for t in [*args, *kwargs.values()]:
            if torch.is_tensor(t):
                assert t.device == device, f"input on {t.device}, model on {device}"
        if expect["autocast"]:
            assert torch.is_autocast_enabled(device.type), "forward pass outside the accelerator's mixed precision"
        seen.append(device.type)

    real = models.load_classifier

    def checked(*a, **k):
        model, tok, meta = real(*a, **k)
        model.base_model.register_forward_pre_hook(check, with_kwargs=True)  # inside accelerate's autocast
        return model, tok, meta

    monkeypatch.setattr(pipeline, "load_classifier", checked)
    monkeypatch.setattr(models, "load_classifier", checked)
    expect["autocast"] = True
    assert unlearn(tiny_victim, poisoned, tmp_path / "rga", "--mixed-precision", "bf16", "--eval-every", 1) == 0
    expect["autocast"] = False
    assert run_cli("evaluate", "--model", tmp_path / "rga", "--poisoned-set", poisoned, "--max-length", 32) == 0
    assert run_cli("detect", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", tmp_path / "f.jsonl",
                   "--detector", "loss", "--max-length", 32) == 0
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert len(seen) > 10 and set(seen) == {want}
