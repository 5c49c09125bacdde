"""Interruption, divergence, determinism, untrusted models, and results left behind by crashes."""

import json
import subprocess
import sys

import yaml

from unbackdoor.artifacts import read_json, read_jsonl
from conftest import _train_args, run_cli


KILLER = """
import os, signal, sys
from unbackdoor.objectives.ce import CrossEntropy
from unbackdoor.cli import main
real = CrossEntropy.__call__
n = {"calls": 0}
def call(self, model, batch, clean):
    n["calls"] += 1
    if n["calls"] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no handler, no clean-up
    return real(self, model, batch, clean)
CrossEntropy.__call__ = call
main(sys.argv[1:])
"""


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, poisoned, tiny_base):
    ref = tmp_path / "ref"
    assert run_cli(*_train_args(poisoned, ref, tiny_base)) == 0
    out = tmp_path / "run"
    args = [str(a) for a in _train_args(poisoned, out, tiny_base)]
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], env={**__import__("os").environ, "KILL_AT": "55"},
                          capture_output=True)
    assert proc.returncode == -9
    state = read_json(out / "checkpoint" / "loop_state.json")
    assert (state["epoch"], state["batch"]) == (1, 0)  # the last epoch-end checkpoint survived
    assert len(read_jsonl(out / "loss_log.jsonl")) == 54  # steps of the killed, unfinished epoch were logged
    assert run_cli(*_train_args(poisoned, out, tiny_base)) == 0
    assert read_json(ref / "metrics.json")["metrics"] == read_json(out / "metrics.json")["metrics"]
    assert [r["step"] for r in read_jsonl(out / "loss_log.jsonl")] == list(range(1, 81))


def test_same_command_same_seed_identical_metrics(tmp_path, poisoned, tiny_victim):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "rga",
                       "--epochs", 2, "--lr", 1e-3, "--max-length", 48, "--seed", 3) == 0
        outs.append(out)
    a, b = (read_json(o / "metrics.json") for o in outs)
    assert a["metrics"] == b["metrics"] and a["curve"] == b["curve"]
    assert read_jsonl(outs[0] / "loss_log.jsonl") == read_jsonl(outs[1] / "loss_log.jsonl")


def test_evaluation_schedule_does_not_change_training(tmp_path, poisoned, tiny_victim):
    """Evaluating every epoch or only at the end must give the same final model."""
    finals = []
    for every in (1, 0):
        out = tmp_path / f"every{every}"
        assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "ga",
                       "--epochs", 2, "--lr", 1e-3, "--max-length", 48, "--seed", 3, "--eval-every", every) == 0
        m = read_json(out / "metrics.json")
        finals.append((m["metrics"], [r["loss"] for r in read_jsonl(out / "loss_log.jsonl")]))
    assert finals[0] == finals[1]


def test_divergence_stops_keeps_checkpoint_and_writes_no_metrics(tmp_path, poisoned, tiny_victim, monkeypatch,
                                                                 capsys):
    import torch

    from unbackdoor.objectives.ga import GradientAscent

    real = GradientAscent.__call__
    calls = {"n": 0}
    n_per_epoch = -(-read_json(poisoned / "meta.json")["counts"]["poisoned"] // 8)

    def exploding(self, model, batch, clean):
        calls["n"] += 1
        loss, logs = real(self, model, batch, clean)
        return (loss * float("inf") if calls["n"] > n_per_epoch + 1 else loss), logs  # in epoch 2

    monkeypatch.setattr(GradientAscent, "__call__", exploding)
    out = tmp_path / "ga"
    # select off: the step count above is of all of D_p, and a selection must not end the run before epoch 2.
    code = run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", out, "--method", "ga",
                   "--epochs", 5, "--batch-size", 8, "--max-length", 48, "--select-action", "off")
    err = capsys.readouterr().err
    assert code == 2 and "ga: loss became" in err and "last finite checkpoint is kept" in err
    state = read_json(out / "checkpoint" / "loop_state.json")
    assert state["epoch"] == 1 and not (out / "metrics.json").exists()
    assert torch.isfinite(torch.tensor([r["loss"] for r in read_jsonl(out / "loss_log.jsonl")])).all()


def test_pickle_weights_refused_unless_allowed(tmp_path, poisoned, tiny_victim, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pk = tmp_path / "pickled"
    import torch

    model = AutoModelForSequenceClassification.from_pretrained(tiny_victim / "model")
    model.save_pretrained(pk)
    (pk / "model.safetensors").unlink()
    torch.save(model.state_dict(), pk / "pytorch_model.bin")  # the pickle format of older checkpoints
    AutoTokenizer.from_pretrained(tiny_victim / "model").save_pretrained(pk)
    assert (pk / "pytorch_model.bin").is_file() and not list(pk.glob("*.safetensors"))
    assert run_cli("evaluate", "--model", pk, "--poisoned-set", poisoned) == 2
    assert "pickle checkpoint (.bin/.pt), which can run arbitrary code" in capsys.readouterr().err
    assert run_cli("evaluate", "--model", pk, "--poisoned-set", poisoned, "--allow-pickle") == 0


def test_not_a_classifier_and_label_count_mismatch(tmp_path, poisoned, tiny_victim, tiny_base, capsys,
                                                   shared_root):
    assert run_cli("unlearn", "--model", tiny_base, "--poisoned-set", poisoned, "--out", tmp_path / "u") == 2
    assert "is not a sequence classifier (architectures: ['BertModel'])" in capsys.readouterr().err
    ag = tmp_path / "ag"
    assert run_cli("poison", "--out", ag, "--dataset", "agnews", "--train-size", 40, "--test-size", 20) == 0
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", ag, "--out", tmp_path / "u") == 2
    assert "has 2 output classes but the data has 4" in capsys.readouterr().err
    assert not (tmp_path / "u").exists()


def test_bad_paraphrase_bank_and_bad_flag_files(tmp_path, poisoned, tiny_victim, capsys):
    bank = tmp_path / "bank.tsv"
    bank.write_text("text\tpara\na\tb\n")
    assert run_cli("poison", "--out", tmp_path / "p", "--attack", "stylebkd", "--bank", str(bank)) == 2
    assert "bank.tsv: missing column(s) ['paraphrase']; found columns ['text', 'para']" in capsys.readouterr().err
    rows = read_jsonl(poisoned / "train.jsonl")
    for flags, msg in ((0, "no row has poisoned=1; the poisoned set D_p is empty"),
                       (1, "every row is flagged poisoned; D_c (the clean samples) would be empty")):
        f = tmp_path / f"flags{flags}.jsonl"
        f.write_text("\n".join(json.dumps({"text": r["text"], "label": r["label"], "poisoned": flags}) for r in rows))
        assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", f, "--eval-set", poisoned,
                       "--out", tmp_path / "u") == 2
        assert msg in capsys.readouterr().err
    bad = tmp_path / "flags.tsv"
    bad.write_text("text\tlabel\tpoisoned\na b\t1\t1\nc d\t0\t0\ne f\t0\tyes\n")
    assert run_cli("unlearn", "--model", tiny_victim, "--poisoned-set", bad, "--eval-set", poisoned,
                   "--out", tmp_path / "u") == 2
    assert "flags.tsv: line 4: column 'poisoned' must be 0/1 or true/false, got 'yes'" in capsys.readouterr().err


def test_crash_leftovers_repaired_and_other_experiments_not_merged(tmp_path, tiny_base, capsys, shared_root):
    from test_experiments import grid_config

    cfg = grid_config(tmp_path, tiny_base, methods=["ga"])
    assert run_cli("run", cfg, "--no-report") == 0
    stale = tmp_path / "results" / "sst2" / "badnets" / "seed1" / "ga" / ".model.tmpabc"
    stale.mkdir()
    assert run_cli("run", cfg, "--no-report") == 0
    assert not stale.exists() and "left by an interrupted run" in capsys.readouterr().out
    data = yaml.safe_load(cfg.read_text())
    lr, data["unlearn"]["lr"] = data["unlearn"]["lr"], 0.5
    cfg.write_text(yaml.safe_dump(data))
    assert run_cli("run", cfg) == 2
    assert "holds results of a different experiment (sections ['unlearn'] differ" in capsys.readouterr().err
    data["unlearn"]["lr"] = lr
    data["method_overrides"] = {"ga-x": {"method": "ga", "lr": 0.5}}  # a new variant: the grid may grow by it
    cfg.write_text(yaml.safe_dump(data))
    assert run_cli("run", cfg, "--no-report") == 0
    data["method_overrides"]["ga"] = {"lr": 0.5}  # but ga's own results were made without this
    cfg.write_text(yaml.safe_dump(data))
    assert run_cli("run", cfg) == 2
    assert "sections ['method_overrides'] differ" in capsys.readouterr().err


def test_git_revision_is_read_once_per_process(monkeypatch):
    # A commit made while a long run goes on must not be recorded as the revision of that run's results.
    import subprocess

    from unbackdoor.artifacts import git_revision

    first = git_revision()

    def no_git(*a, **k):
        raise AssertionError("git asked again")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert git_revision() == first
