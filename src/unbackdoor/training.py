"""The one training loop. Victim training, ReTrain, GA, NPO and RGA all run here; they differ only
in the objective. Built on `accelerate`, so the same code runs on a CPU, one GPU, or many
processes (`accelerate launch`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .artifacts import read_json, write_json
from .errors import DivergenceError, Interrupted


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
    """Pads each batch to its own longest sequence (dynamic padding), on the tokenizer's side."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def __call__(self, items: list[dict]) -> dict:
        n = max(len(it["input_ids"]) for it in items)
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


# ---------------------------------------------------------------- the loop

@dataclass
class LoopConfig:
    epochs: int
    lr: float
    batch_size: int
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    seed: int = 42
    eval_batch_size: int = 128
    checkpoint_every: int = 1
    group_by_length: bool = True
    reset_optimizer: bool = False
    clean_sampling: str = "shuffle"

    @classmethod
    def of(cls, cfg, **overrides) -> "LoopConfig":
        """The loop settings a stage config (train, unlearn, detect) shares with the loop, by field name."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in cfg.model_dump().items() if k in names}, **overrides})


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _infinite(loader_factory):
    epoch = 0
    while True:
        yield from loader_factory(epoch)
        epoch += 1


class _StopFlag:
    """SIGINT/SIGTERM finish the current step, checkpoint, and exit cleanly."""

    def __init__(self):
        self.raised = None

    def __enter__(self):
        self.old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.old:
            try:
                signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.raised = signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            try:
                signal.signal(s, h)
            except ValueError:
                pass


def train_loop(model, tokenizer, objective, primary: TokenizedSet, cfg: LoopConfig, out_dir: str | Path,
               paired: TokenizedSet | None = None, on_epoch_end: Callable[[int], dict] | None = None,
               accelerator=None, progress: bool = True) -> dict:
    """Runs `objective` over `primary` for cfg.epochs; each step may pair a random batch of `paired`.

    Resumes from out_dir/checkpoint when one exists. Returns {"history": [...], "stopped_early": ...}.
    Writes one JSON line per step to out_dir/loss_log.jsonl.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or Accelerator()
    set_seed(cfg.seed)
    collator = Collator(tokenizer)

    def loader(dataset, epoch, batch_size, replacement=False):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)  # data order is a function of the epoch
        # Each DataLoader also gets `generator`: without one, starting its iterator draws a seed from the
        # global RNG, and a run resumed mid-epoch would then see other dropout masks than the original.
        if replacement:  # the authors' code draws D_c batches with replacement
            sampler = torch.utils.data.RandomSampler(dataset, replacement=True, generator=g)
            dl = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, generator=g)
        elif cfg.group_by_length:
            lengths = [len(f["input_ids"]) for f in dataset.features]
            dl = DataLoader(dataset, batch_sampler=LengthGroupedBatches(lengths, batch_size, g), collate_fn=collator,
                            generator=g)
        else:
            dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collator)
        return accelerator.prepare_data_loader(dl)

    # batch_size is the global batch: each of N processes takes batch_size / N, so the optimisation
    # is the same on one CPU and on many GPUs.
    per_device = max(1, cfg.batch_size // accelerator.num_processes)
    steps_per_epoch = math.ceil(len(primary) / (per_device * accelerator.num_processes))
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = (get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
                 if cfg.scheduler == "linear" else get_constant_schedule(optimizer))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    objective.setup(accelerator.unwrap_model(model), accelerator)

    ckpt = out_dir / "checkpoint"
    # epoch = completed epochs; batch = batches already done in the next, unfinished epoch.
    state = {"epoch": 0, "batch": 0, "step": 0, "history": [], "stopped_early": None}
    log_path = out_dir / "loss_log.jsonl"
    if (ckpt / "loop_state.json").is_file():
        accelerator.load_state(str(ckpt))
        state = {"batch": 0, **read_json(ckpt / "loop_state.json")}
        objective.load_state_dict(state.get("objective", {}))
        accelerator.print(f"resuming from {ckpt}: epoch {state['epoch'] + 1}, batch {state['batch']}")
        if accelerator.is_main_process and log_path.is_file():
            # Steps logged after the checkpoint (before a hard kill) will be run again: drop them.
            kept = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= state["step"]]
            log_path.write_text("".join(ln + "\n" for ln in kept))
    elif accelerator.is_main_process:
        log_path.unlink(missing_ok=True)

    model.train()
    t0 = time.time() - state.get("seconds", 0.0)
    with _StopFlag() as stop, open(log_path, "a", encoding="utf-8", buffering=1) as log:  # line-buffered: tail -f works
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            skip = state["batch"]
            batches = itertools.islice(loader(primary, epoch, per_device), skip, None)
            bar = tqdm(batches, desc=f"{objective.name} epoch {epoch}/{cfg.epochs}", initial=skip,
                       total=steps_per_epoch, disable=not (progress and accelerator.is_local_main_process),
                       leave=False, mininterval=0.1 if sys.stderr.isatty() else 30)
            # Clean batches are drawn at random, from a stream seeded by the epoch so a resumed run repeats it.
            paired_iter = (_infinite(lambda e, ep=epoch: loader(paired, 100_000 * (ep + 1) + e, per_device,
                                                                 cfg.clean_sampling == "replacement"))
                           if paired is not None else None)
            if cfg.reset_optimizer and epoch > 1 and skip == 0:
                # The authors' code builds a fresh AdamW each epoch: Adam's moments restart from zero.
                # (A run resumed mid-epoch keeps the restored state, as the uninterrupted run did.)
                optimizer.optimizer.state.clear()
            for _ in range(skip if paired_iter is not None else 0):
                next(paired_iter)
            for batch in bar:
                clean = next(paired_iter) if paired_iter is not None else None
                loss, logs = objective(model, batch, clean)
                if not torch.isfinite(loss):
                    raise DivergenceError(
                        f"{objective.name}: loss became {loss.item()} at epoch {epoch}, step {state['step'] + 1}; "
                        f"the last finite checkpoint is kept in {ckpt}. Lower the learning rate or the epochs.")
                accelerator.backward(loss)
                if cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["batch"] += 1
                logs = {"step": state["step"], "epoch": epoch, "lr": scheduler.get_last_lr()[0], **logs}
                if accelerator.is_main_process:
                    log.write(json.dumps(logs) + "\n")
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("loss", "ce_p", "ce_c", "lambda")},
                                refresh=False)
                if objective.should_stop():
                    state["stopped_early"] = {"epoch": epoch, "step": state["step"], "reason": objective.stop_reason}
                    break
                if stop.raised:
                    break
            log.flush()
            state["objective"] = objective.state_dict()
            state["seconds"] = round(time.time() - t0, 2)
            if stop.raised and not state["stopped_early"]:
                # Mid-epoch: save where we are; the epoch is not complete and is not evaluated.
                _checkpoint(accelerator, ckpt, state)
                raise Interrupted(f"interrupted in epoch {epoch} after batch {state['batch']}; checkpoint saved in "
                                  f"{ckpt}; run the same command again to resume")
            state["epoch"], state["batch"] = epoch, 0
            entry = {"epoch": epoch, "step": state["step"], "seconds": state["seconds"]}
            if on_epoch_end is not None:
                entry.update(on_epoch_end(epoch) or {})
            state["history"].append(entry)
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs:
                _checkpoint(accelerator, ckpt, state)
            if state["stopped_early"]:
                break
    return state


def _checkpoint(accelerator, ckpt: Path, state: dict) -> None:
    # Save to a temporary folder, then swap: a crash mid-save leaves the previous checkpoint intact.
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_json(tmp / "loop_state.json", state)
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
