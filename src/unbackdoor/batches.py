"""Tokenised rows and batches: tokenisation once (cached on disk), dynamic padding, length-grouped
batches, and logits over a whole set. Shared by training, evaluation and the detectors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset


# ---------------------------------------------------------------- tokenisation, once

def _cache_dir() -> Path:
    return Path(os.environ.get("UNBACKDOOR_CACHE", Path.home() / ".cache" / "unbackdoor")) / "tokens"


def encode(tokenizer, texts: list[str], max_length: int, cache: bool = True) -> list[dict]:
    """Token ids for each text, unpadded (padding happens per batch). Cached on disk by content."""
    key = hashlib.sha256(json.dumps([tokenizer.name_or_path, type(tokenizer).__name__, len(tokenizer),
                                     max_length, texts]).encode()).hexdigest()[:32]
    path = _cache_dir() / f"{key}.pt"
    if cache and path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    # add_special_tokens explicitly: whether BOS/CLS is added must not depend on the transformers version.
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    out = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(out, tmp)
        os.replace(tmp, path)
    return out


class TokenizedSet(Dataset):
    """Tokenised rows with labels; `idx` lets objectives look up per-sample reference outputs."""

    def __init__(self, tokenizer, rows: list[dict], max_length: int):
        self.features = encode(tokenizer, [r["text"] for r in rows], max_length)
        self.labels = [int(r["label"]) for r in rows]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {**self.features[i], "labels": self.labels[i], "idx": i}


class Collator:
    """Pads each batch to its own longest sequence (dynamic padding), on the tokenizer's side.

    pad_to_multiple_of=8 under mixed precision: tensor cores take fp16/bf16 matrices whose sizes
    are multiples of 8; a few pad tokens cost less than the slower kernels otherwise chosen."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.multiple = pad_to_multiple_of or 1

    def __call__(self, items: list[dict]) -> dict:
        n = math.ceil(max(len(it["input_ids"]) for it in items) / self.multiple) * self.multiple
        batch = {}
        for key, fill in (("input_ids", self.pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key not in items[0]:
                continue
            rows = []
            for it in items:
                pad = [fill] * (n - len(it[key]))
                rows.append(pad + list(it[key]) if self.left else list(it[key]) + pad)
            batch[key] = torch.tensor(rows, dtype=torch.long)
        batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        batch["idx"] = torch.tensor([it["idx"] for it in items], dtype=torch.long)
        return batch


class LengthGroupedBatches:
    """Batches of similar length, in random order (the Trainer's `group_by_length`, with the batch
    order shuffled too). Random batches of SST-2 are half padding; grouped ones are ~3%.

    Rows are shuffled, cut into mega-batches of `mega` batches, sorted by length inside each, cut
    into batches, and the batches shuffled: each epoch still sees a different mix, and no
    long-to-short order is imposed on the optimisation.
    """

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator, mega: int = 50):
        self.lengths, self.batch_size, self.generator, self.mega = lengths, batch_size, generator, mega

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.mega * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist())

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def forward_logits(model, batch: dict) -> torch.Tensor:
    return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits


@torch.no_grad()
def predict_logits(model, dataset: TokenizedSet, collator: Collator, batch_size: int = 128,
                   accelerator=None) -> torch.Tensor:
    """Logits for every row, in dataset order (gathered without duplicates across processes).

    Runs on a forked RNG: a DataLoader draws a seed from the global generator even without
    shuffling, so an evaluation mid-training would otherwise change the dropout masks that follow,
    and the evaluation schedule would change the trained model."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            if accelerator is None:  # the model may already sit on a GPU: inputs go where it is
                batch = {k: v.to(device) for k, v in batch.items()}
            logits = forward_logits(model, batch).float()
            if accelerator is not None:
                logits = accelerator.gather_for_metrics(logits)
            out.append(logits.cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
