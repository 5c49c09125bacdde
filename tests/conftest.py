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
