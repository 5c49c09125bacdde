import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tmp_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    os.environ["UNBACKDOOR_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def shared_root():
    from unbackdoor.data import data_root

    try:
        return data_root()
    except Exception:
        pytest.skip("shared datasets folder not available")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A small BERT (random init, real code path) with MiniLM's real WordPiece tokenizer, saved
    like a pre-trained checkpoint without a classification head."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from unbackdoor.models import resolve_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_tsv(path: Path, rows, header=("text", "label")):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return path


def run_cli(*args):
    from unbackdoor.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code or 0
    return 0


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, shared_root, tmp_cache):
    out = tmp_path_factory.mktemp("p") / "poisoned"
    assert run_cli("poison", "--out", out, "--dataset", "sst2", "--attack", "badnets", "--train-size", 160,
                   "--test-size", 60, "--seed", 1) == 0
    return out


@pytest.fixture(scope="module")
def tiny_victim(tmp_path_factory, poisoned, tiny_base):
    out = tmp_path_factory.mktemp("v") / "victim"
    assert run_cli("train", "--poisoned-set", poisoned, "--out", out, "--model", tiny_base, "--epochs", 1,
                   "--lr", 1e-3, "--batch-size", 16, "--max-length", 48) == 0
    return out



def _train_args(p, out, tiny_base):
    return ["train", "--poisoned-set", p, "--out", out, "--model", tiny_base, "--epochs", 2, "--lr", 1e-3,
            "--batch-size", 4, "--max-length", 32]


