"""The one training loop. Victim training, ReTrain, GA, NPO and RGA all run here; they differ only
in the objective. Built on `accelerate`, so the same code runs on a CPU, one GPU, or many
processes (`accelerate launch`).

The loop reads top to bottom as its parts: seeding, the optimiser, resuming from a checkpoint,
stopping on a signal, the steps of an epoch (with gradient accumulation), logging, early stopping
and checkpointing. Each part is a function or a small class below.
"""

from __future__ import annotations

import itertools
import json
import math
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
from torch.utils.data import DataLoader

from .artifacts import read_json, write_json
from .batches import Collator, LengthGroupedBatches, TokenizedSet
from .errors import ConfigError, DivergenceError, Interrupted
from .schedules import SCHEDULES

TRACKING_PROJECT = "unbackdoor"  # the TensorBoard run folder under <out>/logs, the wandb project


@dataclass
class LoopConfig:
    epochs: int
    lr: float
    batch_size: int
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    decay_ratio: float = 0.25
    seed: int = 42
    eval_batch_size: int = 128
    checkpoint_every: int = 1
    group_by_length: bool = True
    reset_optimizer: bool = False
    clean_sampling: str = "shuffle"
    gradient_accumulation_steps: int = 1
    log_every: int = 1

    @classmethod
    def of(cls, cfg, **overrides) -> "LoopConfig":
        """The loop settings a stage config (train, unlearn, detect) shares with the loop, by field name."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in cfg.model_dump().items() if k in names}, **overrides})


# ---------------------------------------------------------------- seeding, accelerator, optimiser

def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trackers(report_to: str) -> list[str]:
    """accelerate tracker names for --report-to; one that is not installed is announced and left out."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if report_to == "none":
        return []
    installed = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    name = "tensorboard" if report_to == "auto" else report_to
    if installed[name]:
        return [name]
    if report_to != "auto":
        print(f"note: --report-to {name}: {name} is not installed (pip install {name}), so nothing is tracked; "
              "the loss log (loss_log.jsonl) is written all the same", file=sys.stderr)
    return []


def make_accelerator(mixed_precision: str = "no", gradient_accumulation_steps: int = 1, report_to: str = "none",
                     project_dir: str | Path | None = None):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    # sync_with_dataloader=False: the loop says itself where a group of accumulated batches ends. accelerate's
    # end-of-dataloader signal would also fire at the end of each pass over D_c, in the middle of a group.
    plugin = GradientAccumulationPlugin(num_steps=gradient_accumulation_steps, sync_with_dataloader=False)
    log_with = trackers(report_to) if project_dir is not None else []
    # "no" defers to `accelerate launch --mixed_precision ...` when one was given.
    return Accelerator(mixed_precision=None if mixed_precision == "no" else mixed_precision,
                       gradient_accumulation_plugin=plugin, log_with=log_with or None,
                       project_dir=str(Path(project_dir) / "logs") if log_with else None)


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or "Norm" in type(module).__name__  # RMSNorm, LlamaRMSNorm, ...


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only, as the Trainer: decaying a bias or a LayerNorm scale pulls
    it towards 0, which is no simpler model but a different one (a LayerNorm scale of 0 mutes its layer)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if weight_decay == 0:
        return [{"params": [p for _, p in trainable]}]  # one group, as checkpoints before the split have
    exempt = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    decay = [p for n, p in trainable if not n.endswith("bias") and id(p) not in exempt]
    keep = [p for n, p in trainable if n.endswith("bias") or id(p) in exempt]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0})
            if g["params"]]


@dataclass
class Plan:
    """How an epoch is cut: batch_size is the batch of one optimiser step, over all processes and
    accumulated micro-batches, so the optimisation is the same on one CPU and on many GPUs."""
    micro_batch: int       # rows per micro-batch on one process
    micro_per_epoch: int
    accumulate: int

    @classmethod
    def of(cls, rows: int, cfg: LoopConfig, processes: int) -> "Plan":
        k = cfg.gradient_accumulation_steps
        if cfg.batch_size % k:
            raise ConfigError(f"batch_size {cfg.batch_size} is not a multiple of gradient_accumulation_steps {k}")
        micro = max(1, cfg.batch_size // k // processes)
        return cls(micro, math.ceil(rows / (micro * processes)), k)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_per_epoch / self.accumulate)

    def group(self, i: int) -> tuple[int, bool]:
        """(size of the group micro-batch i belongs to, whether i ends it). The last group of an epoch may
        be short: no gradient is carried into the next epoch, where the data order starts anew."""
        start = i // self.accumulate * self.accumulate
        end = min(start + self.accumulate, self.micro_per_epoch)
        return end - start, i + 1 == end


def _schedule(optimizer, cfg: LoopConfig, total_steps: int):
    if cfg.scheduler not in SCHEDULES:
        raise ConfigError(f"scheduler {cfg.scheduler!r}: expected one of {', '.join(SCHEDULES)}")
    return SCHEDULES[cfg.scheduler](optimizer, total_steps, cfg.warmup_ratio, cfg.decay_ratio)


def _optimisation(model, cfg: LoopConfig, total_steps: int):
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _schedule(optimizer, cfg, total_steps)
    return optimizer, scheduler


# ---------------------------------------------------------------- data order

def _infinite(loader_factory):
    epoch = 0
    while True:
        yield from loader_factory(epoch)
        epoch += 1


class Batches:
    """Data order is a function of the seed and the epoch only, so a resumed run repeats it."""

    def __init__(self, cfg: LoopConfig, accelerator, collator: Collator, micro_batch: int):
        self.cfg, self.accelerator, self.collator, self.micro = cfg, accelerator, collator, micro_batch

    def loader(self, dataset: TokenizedSet, epoch: int, replacement: bool = False):
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        # Each DataLoader also gets `generator`: without one, starting its iterator draws a seed from the
        # global RNG, and a run resumed mid-epoch would then see other dropout masks than the original.
        if replacement:  # the authors' code draws D_c batches with replacement
            sampler = torch.utils.data.RandomSampler(dataset, replacement=True, generator=g)
            dl = DataLoader(dataset, batch_size=self.micro, sampler=sampler, collate_fn=self.collator, generator=g)
        elif self.cfg.group_by_length:
            lengths = [len(f["input_ids"]) for f in dataset.features]
            dl = DataLoader(dataset, batch_sampler=LengthGroupedBatches(lengths, self.micro, g),
                            collate_fn=self.collator, generator=g)
        else:
            dl = DataLoader(dataset, batch_size=self.micro, shuffle=True, generator=g, collate_fn=self.collator)
        return self.accelerator.prepare_data_loader(dl)

    def paired(self, dataset: TokenizedSet | None, epoch: int, skip: int):
        """Clean batches drawn at random, from a stream seeded by the epoch."""
        if dataset is None:
            return itertools.repeat(None)
        stream = _infinite(lambda e: self.loader(dataset, 100_000 * (epoch + 1) + e,
                                                 self.cfg.clean_sampling == "replacement"))
        for _ in range(skip):
            next(stream)
        return stream


# ---------------------------------------------------------------- resume, signals, checkpoints

def resume(accelerator, ckpt: Path, objective, log_path: Path) -> dict:
    """The loop state: fresh, or restored with the model, optimiser and RNG from out_dir/checkpoint.
    epoch = completed epochs; batch = micro-batches already done in the next, unfinished epoch."""
    if not (ckpt / "loop_state.json").is_file():
        if accelerator.is_main_process:
            log_path.unlink(missing_ok=True)
        return {"epoch": 0, "batch": 0, "step": 0, "history": [], "stopped_early": None}
    accelerator.load_state(str(ckpt))
    state = {"batch": 0, **read_json(ckpt / "loop_state.json")}
    objective.load_state_dict(state.get("objective", {}))
    accelerator.print(f"resuming from {ckpt}: epoch {state['epoch'] + 1}, batch {state['batch']}")
    if accelerator.is_main_process and log_path.is_file():
        # Steps logged after the checkpoint (before a hard kill) will be run again: drop them.
        kept = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= state["step"]]
        log_path.write_text("".join(ln + "\n" for ln in kept))
    return state


class StopOnSignal:
    """SIGINT/SIGTERM finish the current optimiser step, checkpoint, and exit cleanly."""

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


def save_checkpoint(accelerator, ckpt: Path, state: dict) -> None:
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


# ---------------------------------------------------------------- logging

def _means(records: list[dict]) -> dict:
    keys = dict.fromkeys(k for r in records for k in r)  # first-seen order
    return {k: sum(r[k] for r in records if k in r) / sum(k in r for r in records) for k in keys}


class StepLog:
    """loss_log.jsonl, one line per `every` optimiser steps (each value the mean over those steps and
    their micro-batches), line-buffered so `tail -f` works; the same values go to the trackers."""

    def __init__(self, path: Path, every: int, accelerator):
        self.path, self.every, self.accelerator = path, every, accelerator
        self.micro, self.window = [], []

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8", buffering=1) if self.accelerator.is_main_process else None
        return self

    def __exit__(self, *exc):
        if self.file:
            self.file.close()

    def micro_batch(self, logs: dict) -> None:
        self.micro.append(logs)

    def optimiser_step(self, step: int, epoch: int, lr: float) -> dict:
        record = _means(self.micro)
        self.micro = []
        self.window.append(record)
        if len(self.window) >= self.every:
            self.flush(step, epoch, lr)
        return record

    def flush(self, step: int, epoch: int, lr: float) -> None:
        if not self.window:
            return
        line = {"step": step, "epoch": epoch, "lr": lr, **_means(self.window)}
        self.window = []
        if self.file:
            self.file.write(json.dumps(line) + "\n")
        self.accelerator.log({f"train/{k}": v for k, v in line.items() if k not in ("step", "epoch")}, step=step)


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def log_evaluation(accelerator, entry: dict, step: int) -> None:
    """Scalars of the evaluation an epoch ended with (eval/<split>/<metric>, select/<statistic>); lists
    and names are not scalars."""
    scalars = {f"eval/{split}/{k}": v for split, m in entry.get("eval", {}).items() for k, v in m.items() if _scalar(v)}
    scalars.update({f"select/{k}": v for k, v in entry.get("select", {}).items() if _scalar(v)})
    if scalars:
        accelerator.log(scalars, step=step)


def start_tracking(accelerator, cfg: LoopConfig, objective) -> None:
    if accelerator.log_with:
        config = {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(TRACKING_PROJECT, config={**config, "objective": objective.name})


def stop_tracking(accelerator) -> None:
    # Not accelerator.end_training(): that also ends the process group, which evaluation still needs.
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


# ---------------------------------------------------------------- the loop

def train_loop(model, tokenizer, objective, primary: TokenizedSet, cfg: LoopConfig, out_dir: str | Path,
               paired: TokenizedSet | None = None, on_epoch_end: Callable[[int, list], dict] | None = None,
               accelerator=None, progress: bool = True, on_start: Callable | None = None) -> dict:
    """Runs `objective` over `primary` for cfg.epochs; each step may pair a random batch of `paired`.

    Resumes from out_dir/checkpoint when one exists. Returns {"history": [...], "stopped_early": ...}.
    Writes one JSON line per `cfg.log_every` optimiser steps to out_dir/loss_log.jsonl.
    on_start(model, accelerator) sees the prepared model before any update and before a checkpoint is
    restored. on_epoch_end(epoch, history of the epochs before) returns the epoch's entry of the
    history; a "stop" key in it (the reason) ends training after that epoch.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    if accelerator.gradient_accumulation_steps != cfg.gradient_accumulation_steps or (
            cfg.gradient_accumulation_steps > 1 and accelerator.gradient_state.sync_with_dataloader):
        raise ConfigError(f"the accelerator passed to train_loop accumulates {accelerator.gradient_accumulation_steps} "
                          f"micro-batches, the config {cfg.gradient_accumulation_steps}: make it with "
                          "training.make_accelerator(gradient_accumulation_steps=...)")
    set_seed(cfg.seed)
    plan = Plan.of(len(primary), cfg, accelerator.num_processes)
    # Under mixed precision, lengths that are multiples of 8 let the matrix products use tensor cores.
    collator = Collator(tokenizer, 8 if accelerator.mixed_precision != "no" else None)
    optimizer, scheduler = _optimisation(model, cfg, plan.steps_per_epoch * cfg.epochs)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    objective.setup(accelerator.unwrap_model(model), accelerator)
    if on_start is not None:
        on_start(accelerator.unwrap_model(model), accelerator)
    loop = _Loop(model, objective, primary, paired, cfg, accelerator, Batches(cfg, accelerator, collator,
                 plan.micro_batch), plan, optimizer, scheduler, out_dir, on_epoch_end, progress)
    return loop.run()


@dataclass
class _Loop:
    model: torch.nn.Module
    objective: object
    primary: TokenizedSet
    paired: TokenizedSet | None
    cfg: LoopConfig
    accelerator: object
    batches: Batches
    plan: Plan
    optimizer: object
    scheduler: object
    out_dir: Path
    on_epoch_end: Callable[[int], dict] | None
    progress: bool

    @property
    def ckpt(self) -> Path:
        return self.out_dir / "checkpoint"

    def run(self) -> dict:
        log_path = self.out_dir / "loss_log.jsonl"
        state = resume(self.accelerator, self.ckpt, self.objective, log_path)
        start_tracking(self.accelerator, self.cfg, self.objective)
        self.model.train()
        t0 = time.time() - state.get("seconds", 0.0)
        # CPU time of this process, all threads: the cost a shared or CPU-only machine pays.
        c0 = time.process_time() - state.get("cpu_seconds", 0.0)
        try:
            with StopOnSignal() as stop, StepLog(log_path, self.cfg.log_every, self.accelerator) as log:
                for epoch in range(state["epoch"] + 1, self.cfg.epochs + 1):
                    if state["stopped_early"]:
                        break  # a checkpoint of a run that had stopped, killed before it was saved: no more epochs
                    if self.cfg.reset_optimizer and epoch > 1 and state["batch"] == 0:
                        # The authors' code builds a fresh AdamW each epoch: Adam's moments restart from zero.
                        # (A run resumed mid-epoch keeps the restored state, as the uninterrupted run did.)
                        self.optimizer.optimizer.state.clear()
                    self.epoch(state, epoch, stop, log)
                    log.flush(state["step"], epoch, self.scheduler.get_last_lr()[0])
                    state["objective"] = self.objective.state_dict()
                    state["seconds"] = round(time.time() - t0, 2)
                    state["cpu_seconds"] = round(time.process_time() - c0, 2)
                    if stop.raised and not state["stopped_early"]:
                        # Mid-epoch: save where we are; the epoch is not complete and is not evaluated.
                        save_checkpoint(self.accelerator, self.ckpt, state)
                        raise Interrupted(f"interrupted in epoch {epoch} after batch {state['batch']}; checkpoint "
                                          f"saved in {self.ckpt}; run the same command again to resume")
                    self.end_epoch(state, epoch)
                    if state["stopped_early"]:
                        break
        finally:
            stop_tracking(self.accelerator)
        return state

    def epoch(self, state: dict, epoch: int, stop: StopOnSignal, log: StepLog) -> None:
        from tqdm.auto import tqdm

        skip = state["batch"]  # a resumed epoch skips what it had done; always a whole number of groups
        primary = itertools.islice(self.batches.loader(self.primary, epoch), skip, None)
        clean = self.batches.paired(self.paired, epoch, skip)
        bar = tqdm(primary, desc=f"{self.objective.name} epoch {epoch}/{self.cfg.epochs}", initial=skip,
                   total=self.plan.micro_per_epoch,
                   disable=not (self.progress and self.accelerator.is_local_main_process),
                   leave=False, mininterval=0.1 if sys.stderr.isatty() else 30)
        for i, batch in enumerate(bar, start=skip):
            size, last = self.plan.group(i)
            log.micro_batch(self.micro_step(batch, next(clean), size, last, state["step"] + 1, epoch))
            state["batch"] += 1
            if not last:
                continue
            state["step"] += 1
            record = log.optimiser_step(state["step"], epoch, self.scheduler.get_last_lr()[0])
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("loss", "ce_p", "ce_c", "lambda")},
                            refresh=False)
            if self.stopped_early(state, epoch) or stop.raised:
                break

    def micro_step(self, batch, clean, group_size: int, last: bool, step: int, epoch: int) -> dict:
        acc = self.accelerator
        # accumulate() syncs when its counter reaches the accumulation steps: set the counter so that it
        # does so exactly at the end of this group (which, at the end of an epoch, may be short).
        acc.step = self.plan.accumulate - 1 if last else 0
        with acc.accumulate(self.model):
            loss, logs = self.objective(self.model, batch, clean)
            if not torch.isfinite(loss):
                raise DivergenceError(
                    f"{self.objective.name}: loss became {loss.item()} at epoch {epoch}, step {step}; the last "
                    f"finite checkpoint is kept in {self.ckpt}. Lower the learning rate or the epochs.")
            # backward() divides by the accumulation steps; scaled so that a short group's step is a mean too.
            acc.backward(loss * (self.plan.accumulate / group_size))
            if acc.sync_gradients and self.cfg.grad_clip > 0:
                acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()  # these three act only when the group ends
            if acc.sync_gradients:
                self.objective.on_optimiser_step(self.scheduler.get_last_lr()[0])
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return logs

    def stopped_early(self, state: dict, epoch: int) -> bool:
        """Early stopping is the objective's decision (a value it logs stayed below a threshold)."""
        if self.objective.should_stop() and not state["stopped_early"]:
            state["stopped_early"] = {"epoch": epoch, "step": state["step"], "reason": self.objective.stop_reason}
        return bool(state["stopped_early"])

    def end_epoch(self, state: dict, epoch: int) -> None:
        """Evaluate (on_epoch_end), record the epoch, and checkpoint every cfg.checkpoint_every epochs."""
        state["epoch"], state["batch"] = epoch, 0
        entry = {"epoch": epoch, "step": state["step"], "seconds": state["seconds"],
                 "cpu_seconds": state.get("cpu_seconds")}
        if self.on_epoch_end is not None:
            entry.update(self.on_epoch_end(epoch, state["history"]) or {})
        reason = entry.pop("stop", None)
        if reason and not state["stopped_early"]:
            state["stopped_early"] = {"epoch": epoch, "step": state["step"], "reason": reason}
        log_evaluation(self.accelerator, entry, state["step"])
        state["history"].append(entry)
        if self.cfg.checkpoint_every and epoch % self.cfg.checkpoint_every == 0 and epoch < self.cfg.epochs:
            save_checkpoint(self.accelerator, self.ckpt, state)
