"""The stages as functions: poison -> train victim -> unlearn (or ReTrain) -> evaluate.

Each writes its outputs into a folder with the resolved config and provenance, so every number
can be traced to the exact settings, library versions and git revision that produced it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .artifacts import provenance, read_json, write_json
from .attacks import PoisonedSet, build_poisoner, load_poisoned_set, poison_dataset, save_poisoned_set
from .config import PoisonConfig, TrainConfig, UnlearnConfig
from .errors import BaseModelError, DataError
from .evaluation import evaluate
from .models import META_FILE, base_parameters, load_classifier, model_folder, resolve_base, run_meta, save_classifier
from .training import Collator, LoopConfig, TokenizedSet, set_seed, train_loop
from .unlearning import CrossEntropy, build_objective, class_weights


def _accelerator(mixed_precision: str = "no"):
    from accelerate import Accelerator

    # "no" defers to `accelerate launch --mixed_precision ...` when one was given.
    return Accelerator(mixed_precision=None if mixed_precision == "no" else mixed_precision)


def _prepare_model(model, cfg, lora=None):
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora is not None and lora.enabled:
        from .models import apply_lora

        model = apply_lora(model, lora)
    return model


def run_poison(cfg: PoisonConfig, out_dir: str | Path, generator=None) -> PoisonedSet:
    from .data import load_data

    data = load_data(cfg.data, seed=cfg.seed)
    data_dir = Path(cfg.data.data_root) if cfg.data.data_root else None
    poisoner = build_poisoner(cfg.attack, data, generator=generator, data_dir=data_dir)
    ps = poison_dataset(data, poisoner, cfg.attack, seed=cfg.seed, data_dir=data_dir)
    save_poisoned_set(ps, out_dir, {"config": cfg.model_dump(), **provenance()})
    return ps


def load_unlearning_sets(source: str | Path, eval_set: str | Path | None = None,
                         flag_column: str = "poisoned") -> PoisonedSet:
    """A `unbackdoor poison` folder, or a user file of training texts with a 0/1 poisoned-flag column."""
    source = Path(source)
    if source.is_dir():
        return load_poisoned_set(source)
    from .data import labeled_rows, read_flags, read_records

    rows = read_records(source, ("text", "label", flag_column))
    flags = read_flags(source, rows, flag_column)
    evs = load_poisoned_set(eval_set) if eval_set else None
    names = evs.label_names if evs else None
    labelled, names = labeled_rows(source, rows, label_names=names)
    for r, f in zip(labelled, flags):
        r["poisoned"] = f
    if not any(flags):
        raise DataError(f"{source}: no row has {flag_column}=1; the poisoned set D_p is empty")
    if all(flags):
        raise DataError(f"{source}: every row is flagged poisoned; D_c (the clean samples) would be empty")
    if evs is None:
        return PoisonedSet(names, -1, labelled, [], [], meta={"source": str(source)})
    return PoisonedSet(names, evs.target, labelled, evs.test_clean, evs.test_triggered, evs.dev_clean,
                       evs.dev_triggered, meta={**evs.meta, "poisoned_set_source": str(source)})


def _eval_rows(ps: PoisonedSet, split: str):
    return (ps.dev_clean, ps.dev_triggered) if split == "dev" else (ps.test_clean, ps.test_triggered)


def stratified_subset(rows: list[dict], k: int, seed: int = 0) -> list[dict]:
    """k rows with the classes in their original proportions, the same rows for every call: curves of
    different methods and epochs are then measured on one sample."""
    import random

    if not k or k >= len(rows):
        return rows
    by = {}
    for i, r in enumerate(rows):
        by.setdefault(r["label"], []).append(i)
    keep = []
    for label, idx in sorted(by.items()):
        keep += random.Random(f"{seed}-{label}").sample(idx, max(1, round(k * len(idx) / len(rows))))
    return [rows[i] for i in sorted(keep)]


def _evaluate(model, tok, ps, cfg, accelerator, splits=("test",), subset: int = 0) -> dict:
    out = {}
    for split in splits:
        clean, trig = (stratified_subset(rows, subset) for rows in _eval_rows(ps, split))
        if clean and trig:
            out[split] = evaluate(model, tok, clean, trig, ps.target, ps.label_names, cfg.max_length,
                                  cfg.eval_batch_size, accelerator)
    return out


def _finish(out_dir: Path, model, tok, accelerator, meta: dict, result: dict) -> dict:
    if accelerator.is_main_process:
        save_classifier(accelerator.unwrap_model(model), tok, out_dir / "model", meta)
        write_json(out_dir / "metrics.json", result)  # written last: its presence marks a finished run
        shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()
    return result


def run_train(poisoned_set: str | Path, cfg: TrainConfig, out_dir: str | Path, clean_only: bool = False,
              eval_splits=("test",), progress: bool = True, eval_set: str | Path | None = None) -> dict:
    """Fine-tune a victim on the poisoned training set, or (clean_only) ReTrain it on D_c."""
    out_dir = Path(out_dir)
    ps = load_unlearning_sets(poisoned_set, eval_set)
    accelerator = _accelerator(cfg.mixed_precision)
    rows = ps.clean if clean_only else ps.train
    set_seed(cfg.seed)  # the new classification head is initialised from the seed
    model, tok, _ = load_classifier(cfg.model, len(ps.label_names), ps.label_names, for_training=True,
                                    trust_remote_code=cfg.trust_remote_code)
    model = _prepare_model(model, cfg, cfg.lora)
    objective = CrossEntropy()
    if cfg.class_weights == "balanced":
        objective.class_weight = class_weights([r["label"] for r in rows], len(ps.label_names))
    t0 = time.time()
    state = train_loop(model, tok, objective, TokenizedSet(tok, rows, cfg.max_length),
                       LoopConfig.of(cfg),
                       out_dir, accelerator=accelerator, progress=progress)
    train_seconds = time.time() - t0
    metrics = _evaluate(model, tok, ps, cfg, accelerator, eval_splits)
    meta = {"base_model": cfg.model, "label_names": ps.label_names, "target": ps.target,
            "role": "retrain" if clean_only else "victim", "train_config": cfg.model_dump(),
            "lora": cfg.lora.model_dump() if cfg.lora.enabled else None,
            "poisoned_set": str(poisoned_set)}
    result = {"kind": meta["role"], "metrics": metrics, "train_seconds": round(train_seconds, 1),
              "n_train": len(rows), "history": state["history"], "config": cfg.model_dump(),
              "poisoned_set": str(poisoned_set), "poison_meta": ps.meta, **provenance()}
    return _finish(out_dir, model, tok, accelerator, meta, result)


def _retrain_config(model_dir, cfg: UnlearnConfig) -> TrainConfig:
    """ReTrain with the settings the victim was trained with (its unbackdoor.json); for a victim from
    elsewhere, train --base-model with the unlearn settings. An explicit seed or base model wins."""
    meta = run_meta(model_dir)
    if "train_config" in meta:
        tcfg = TrainConfig(**meta["train_config"])
    elif cfg.base_model:
        tcfg = TrainConfig(**{k: v for k, v in cfg.model_dump().items() if k in TrainConfig.model_fields})
    else:
        raise BaseModelError(
            f"{model_dir} has no {META_FILE}, so the model and settings it was trained with are unknown; to ReTrain, "
            "pass --base-model NAME_OR_PATH (the clean model to train on D_c) and the training settings as unlearn "
            "options (--epochs, --lr, --batch-size, --max-length), or run `unbackdoor train --clean-only`")
    changes = {"seed": cfg.seed} if "seed" in cfg.model_fields_set else {}
    if cfg.base_model:
        changes["model"] = cfg.base_model
    return tcfg.model_copy(update=changes)


def run_unlearn(model_dir: str | Path, poisoned_set: str | Path, cfg: UnlearnConfig, out_dir: str | Path,
                eval_set: str | Path | None = None, eval_splits=("test",), progress: bool = True,
                allow_pickle: bool = False) -> dict:
    """Unlearn the backdoor of a poisoned model with GA, NPO or RGA (or ReTrain with the victim's settings)."""
    out_dir = Path(out_dir)
    ps = load_unlearning_sets(poisoned_set, eval_set)
    if cfg.method == "retrain":
        return run_train(poisoned_set, _retrain_config(model_dir, cfg), out_dir, clean_only=True,
                         eval_splits=eval_splits, progress=progress, eval_set=eval_set)
    model_path = model_folder(model_dir)
    victim_meta = run_meta(model_dir)
    accelerator = _accelerator(cfg.mixed_precision)
    if victim_meta.get("lora") and (Path(model_dir) / "adapter").is_dir():
        from .models import load_lora_victim

        model, tok, meta = load_lora_victim(Path(model_dir), len(ps.label_names), ps.label_names)
    else:
        model, tok, meta = load_classifier(str(model_path), len(ps.label_names), ps.label_names,
                                           allow_pickle=allow_pickle)
    model = _prepare_model(model, cfg)
    dp, dc = ps.poisoned, ps.clean
    if not dp:
        raise DataError(f"{poisoned_set}: the poisoned set D_p is empty; nothing to unlearn")
    needs_base = cfg.method == "rga" and cfg.rga.beta > 0 and not victim_meta.get("lora")
    try:
        base, base_source = resolve_base(model_dir, cfg.base_model)
    except BaseModelError:
        if needs_base:
            raise
        base, base_source = None, None  # GA, NPO and RGA without its L2 term only record it
    objective_kwargs = {"base_params": base_parameters(model, base)} if needs_base else {}
    objective = build_objective(cfg, **objective_kwargs)
    if cfg.class_weights == "balanced":
        objective.class_weight = class_weights([r["label"] for r in dc], len(ps.label_names))
    primary = TokenizedSet(tok, dp, cfg.max_length)
    if objective.needs_reference:
        # f_p's outputs on D_p, once, before any update: no second model is kept or run afterwards.
        objective.reference_from(primary, Collator(tok), cfg.eval_batch_size)

    def on_epoch_end(epoch):
        if (cfg.eval_every and epoch % cfg.eval_every == 0) or epoch == cfg.epochs or objective.should_stop():
            t = time.time()
            final = epoch == cfg.epochs or objective.should_stop()
            metrics = _evaluate(model, tok, ps, cfg, accelerator, eval_splits, 0 if final else cfg.eval_subset)
            # The loop's clock runs through evaluations: record them, so cost-to-purify can leave them out.
            return {"eval": metrics, "eval_seconds": round(time.time() - t, 2)}
        return {}

    t0 = time.time()
    state = train_loop(model, tok, objective, primary,
                       LoopConfig.of(cfg),
                       out_dir, paired=TokenizedSet(tok, dc, cfg.max_length), on_epoch_end=on_epoch_end,
                       accelerator=accelerator, progress=progress)
    seconds = time.time() - t0
    # From the loop's history, which survives a resume, rather than from this process's memory.
    curve = [{"epoch": h["epoch"], **h["eval"]} for h in state["history"] if "eval" in h]
    final = curve[-1] if curve else {}
    out_meta = {**meta, **({"base_model": base} if base else {}), "role": f"unlearned-{cfg.method}",
                "unlearn_config": cfg.model_dump(), "poisoned_model": str(model_dir)}
    result = {"kind": cfg.method, "metrics": {k: v for k, v in final.items() if k != "epoch"},
              "curve": curve, "history": state["history"],
              "stopped_early": state["stopped_early"], "unlearn_seconds": round(seconds, 1),
              "n_poisoned": len(dp), "n_clean": len(dc), "config": cfg.model_dump(), "model": str(model_dir),
              "base_model": base, "base_model_source": base_source,
              "poisoned_set": str(poisoned_set), "poison_meta": ps.meta, **provenance()}
    return _finish(out_dir, model, tok, accelerator, out_meta, result)


def run_evaluate(model_dir: str | Path, poisoned_set: str | Path, out: str | Path | None = None,
                 splits=("test",), max_length: int = 128, batch_size: int = 128, retrain: str | Path | None = None,
                 allow_pickle: bool = False) -> dict:
    ps = load_poisoned_set(poisoned_set)
    model, tok, _ = load_classifier(str(model_folder(model_dir)), len(ps.label_names), ps.label_names, allow_pickle=allow_pickle)
    cfg = TrainConfig(max_length=max_length, eval_batch_size=batch_size)
    accelerator = _accelerator()
    model = accelerator.prepare_model(model, evaluation_mode=True)  # its device and precision, not the CPU's
    metrics = _evaluate(model, tok, ps, cfg, accelerator, splits)
    if retrain:
        from .evaluation import degenerate_reason, delta_pacc
        from .verdict import decide

        ref = read_json(Path(retrain) / "metrics.json")["metrics"]
        for split, m in metrics.items():
            if split not in ref:
                continue
            v = decide(m, ref[split], ps.target, ps.label_names)
            m.update(verdict=v.label, verdict_message=v.message)
            bad = degenerate_reason(ref[split])
            if bad:  # a ReTrain that learned nothing is no yardstick
                m["retrain_degenerate"] = bad
            else:
                m.update(delta_pacc=delta_pacc(m, ref[split]), signed_delta_pacc=m["pacc"] - ref[split]["pacc"])
    result = {"model": str(model_dir), "poisoned_set": str(poisoned_set), "metrics": metrics, **provenance()}
    if out:
        write_json(out, result)
    return result

