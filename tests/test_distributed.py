"""Training and unlearning under `accelerate launch` with 2 CPU processes (gloo) give the same
result as 1 process: same global batch, no dropout, so the only difference is float summation order."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from unbackdoor.artifacts import read_json

TOL = 1e-4  # max |weight difference| after training; metrics must be identical


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_root, tmp_cache):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from test_pipeline import run_cli
    from unbackdoor.models import resolve_model

    if shutil.which("accelerate") is None and not (os.path.dirname(sys.executable) and
                                                   os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate"))):
        pytest.skip("accelerate launcher not installed")
    tmp = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    BertModel(cfg).save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")
    assert run_cli("poison", "--out", tmp / "p", "--train-size", 192, "--test-size", 61, "--seed", 1) == 0
    return tmp


def launch(n, *args):
    exe = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [exe, "launch", "--cpu", "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "unbackdoor.cli", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(run):
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def test_two_processes_match_one(setup):
    tmp = setup
    for n in (1, 2):
        launch(n, "train", "--poisoned-set", tmp / "p", "--out", tmp / f"v{n}", "--model", tmp / "base",
               "--epochs", 2, "--lr", 3e-3, "--batch-size", 16, "--max-length", 32, "--eval-batch-size", 8)
        launch(n, "unlearn", "--model", tmp / f"v{n}", "--poisoned-set", tmp / "p", "--out", tmp / f"rga{n}",
               "--method", "rga", "--epochs", 2, "--lr", 3e-3, "--batch-size", 16, "--max-length", 32,
               "--eval-batch-size", 8, "--eval-every", 1)
    for stage in ("v", "rga"):
        w1, w2 = weights(tmp / f"{stage}1"), weights(tmp / f"{stage}2")
        assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < TOL
        m1, m2 = (read_json(tmp / f"{stage}{n}" / "metrics.json")["metrics"]["test"] for n in (1, 2))
        assert m1["n_clean"] == m2["n_clean"] == 61 and m1["n_triggered"] == m2["n_triggered"] == 61  # no duplicates
        assert m1["confusion_triggered"] == m2["confusion_triggered"] and m1["cacc"] == m2["cacc"]
    assert weights(tmp / "rga1").keys() == weights(tmp / "v1").keys()
    assert any((weights(tmp / "rga2")[k] - weights(tmp / "v2")[k]).abs().max() > 0 for k in weights(tmp / "v2"))
