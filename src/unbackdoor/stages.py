"""The single stages: poison -> train victim -> (detect) -> unlearn (or ReTrain) -> evaluate.
(grid.py runs them over datasets x attacks x seeds x methods.)

Each stage has an in-memory core (rows, models and configs in; models, states and numbers out),
which the Python API calls, and a `run_*` wrapper, which the command line and the grid call: it
loads the inputs from folders and writes the outputs into one, with the resolved config and
provenance, so every number can be traced to the exact settings, library versions and git
revision that produced it.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from .artifacts import provenance, read_json, write_json, write_jsonl
from .attacks import build_poisoner, poison_dataset
from .batches import Collator, TokenizedSet
from .config import DetectConfig, PoisonConfig, TrainConfig, UnlearnConfig
from .detectors import DETECTORS, Detection, build_detector, precision_recall_f1
from .errors import BASE_HINT, BaseModelError, ConfigError, DataError
from .evaluation import degenerate_reason, delta_pacc, evaluate
from .models import (META_FILE, base_parameters, is_peft, load_classifier, model_folder, resolve_base, run_meta,
                     save_classifier)
from .objectives import OBJECTIVES, build_objective, class_weights
from .objectives.ce import CrossEntropy, ReTrain
from .poisoned_set import PoisonedSet, load_poisoned_set, load_unlearning_sets, save_poisoned_set
from .selection import Selector, mostly_test_rows
from .training import LoopConfig, make_accelerator, set_seed, train_loop


def _accelerator(cfg, out_dir: str | Path | None = None):
    return make_accelerator(cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.report_to, out_dir)


def _prepare_model(model, cfg, lora=None):
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora is not None and lora.enabled:
        from .models import apply_lora

        model = apply_lora(model, lora)
    return model


# ---------------------------------------------------------------- poison

def poison_data(data, cfg: PoisonConfig, generator=None) -> PoisonedSet:
    """The poisoned set of a LabeledData: the attack's trigger in a share of the training rows and in
    test rows of every class."""
    data_dir = Path(cfg.data.data_root) if cfg.data.data_root else None
    poisoner = build_poisoner(cfg.attack, data, generator=generator, data_dir=data_dir)
    return poison_dataset(data, poisoner, cfg.attack, seed=cfg.seed, data_dir=data_dir)


def run_poison(cfg: PoisonConfig, out_dir: str | Path, generator=None) -> PoisonedSet:
    from .data import load_data

    ps = poison_data(load_data(cfg.data, seed=cfg.seed), cfg, generator)
    save_poisoned_set(ps, out_dir, {"config": cfg.model_dump(), **provenance()})
    return ps


# ---------------------------------------------------------------- evaluate

def _eval_rows(ps: PoisonedSet, split: str):
    return (ps.dev_clean, ps.dev_triggered) if split == "dev" else (ps.test_clean, ps.test_triggered)


def stratified_subset(rows: list[dict], k: int, seed: int = 0) -> list[dict]:
    """k rows with the classes in their original proportions, the same rows for every call: curves of
    different methods and epochs are then measured on one sample."""
    if not k or k >= len(rows):
        return rows
    by = {}
    for i, r in enumerate(rows):
        by.setdefault(r["label"], []).append(i)
    keep = []
    for label, idx in sorted(by.items()):
        keep += random.Random(f"{seed}-{label}").sample(idx, max(1, round(k * len(idx) / len(rows))))
    return [rows[i] for i in sorted(keep)]


def evaluate_sets(model, tok, ps: PoisonedSet, max_length: int, batch_size: int, accelerator=None,
                  splits=("test",), subset: int = 0) -> dict:
    """Metrics per split that has clean and triggered rows: {split: {cacc, lfr, pacc, ...}}."""
    out = {}
    for split in splits:
        clean, trig = (stratified_subset(rows, subset) for rows in _eval_rows(ps, split))
        if clean and trig:
            out[split] = evaluate(model, tok, clean, trig, ps.target, ps.label_names, max_length, batch_size,
                                  accelerator)
    return out


def judge(metrics: dict, reference: dict, ps: PoisonedSet) -> dict:
    """Add to each split's metrics the verdict against ReTrain's metrics and, unless ReTrain is
    degenerate, dPACC; returns {split: Verdict}."""
    from .verdict import decide

    verdicts = {}
    for split, m in metrics.items():
        if split not in reference:
            continue
        v = verdicts[split] = decide(m, reference[split], ps.target, ps.label_names)
        m.update(verdict=v.label, verdict_message=v.message)
        bad = degenerate_reason(reference[split])
        if bad:  # a ReTrain that learned nothing is no yardstick
            m["retrain_degenerate"] = bad
        else:
            m.update(delta_pacc=delta_pacc(m, reference[split]), signed_delta_pacc=m["pacc"] - reference[split]["pacc"])
    return verdicts


def against_retrain(probes: dict, reference: dict, ps: PoisonedSet) -> None:
    """Add to each split's probe results ReTrain's relearned LFR and the excess over it, and judge each
    trigger variant against ReTrain's metrics on the same variant."""
    for split, m in probes.items():
        ref = reference.get(split, {})
        if any(k.startswith("relearn_lfr_") for k in ref) and ref.get("relearn_lr") != m.get("relearn_lr"):
            raise ConfigError(f"relearning: ReTrain was relearned at lr {ref.get('relearn_lr')}, the model at "
                              f"{m.get('relearn_lr')}; give both the same relearn_lr")
        for key in [k for k in m if k.startswith("relearn_lfr_") and k in ref]:
            k = key[len("relearn_lfr_"):]
            m.update({f"retrain_relearn_lfr_{k}": ref[key], f"relearn_lfr_excess_{k}": m[key] - ref[key]})
        if "trigger_variants" in m and "trigger_variants" in ref:
            judge(m["trigger_variants"], ref["trigger_variants"], ps)


def _evaluation_model(model_dir, ps: PoisonedSet, allow_pickle: bool = False):
    model, tok, _ = load_classifier(str(model_folder(model_dir)), len(ps.label_names), ps.label_names,
                                    allow_pickle=allow_pickle)
    accelerator = make_accelerator()
    # Its device and precision, not the CPU's.
    return accelerator.prepare_model(model, evaluation_mode=True), tok, accelerator


def _probe(model_dir, ps: PoisonedSet, cfg, lr: float, max_length: int, batch_size: int, splits,
           allow_pickle: bool = False) -> dict:
    from .probes import probe_model

    model, tok, accelerator = _evaluation_model(model_dir, ps, allow_pickle)
    return probe_model(model, tok, ps, cfg, lr=lr, max_length=max_length, batch_size=batch_size, splits=splits,
                       accelerator=accelerator)


def probe_against_retrain(model, tok, ps: PoisonedSet, cfg, lr: float, max_length: int, batch_size: int, splits,
                          accelerator=None, retrain: str | Path | None = None, allow_pickle: bool = False) -> dict:
    """The probes of `model` and, given a ReTrain run folder, of ReTrain too (the same K samples and lr),
    compared with them."""
    from .probes import probe_model

    found = probe_model(model, tok, ps, cfg, lr=lr, max_length=max_length, batch_size=batch_size, splits=splits,
                        accelerator=accelerator)
    if retrain:
        against_retrain(found, _probe(retrain, ps, cfg, lr, max_length, batch_size, splits, allow_pickle), ps)
    return found


def run_evaluate(model_dir: str | Path, poisoned_set: str | Path, out: str | Path | None = None,
                 splits=("test",), max_length: int = 128, batch_size: int = 128, retrain: str | Path | None = None,
                 allow_pickle: bool = False, probes=None) -> dict:
    """probes: a probes.ProbeConfig (relearning, trigger variants), run on the model and, with `retrain`,
    on the ReTrain model too, with the same samples and learning rate."""
    ps = load_poisoned_set(poisoned_set)
    if probes is not None and probes.relearn:
        from .probes import relearn_sets

        relearn_sets(ps, probes.relearn, probes.relearn_mix, probes.seed)  # a bad K fails before a model is loaded
    model, tok, accelerator = _evaluation_model(model_dir, ps, allow_pickle)
    metrics = evaluate_sets(model, tok, ps, max_length, batch_size, accelerator, splits)
    extra = {}
    if probes is not None and probes.enabled:
        from .probes import relearn_lr

        lr = probes.relearn_lr or relearn_lr(run_meta(model_dir))
        found = probe_against_retrain(model, tok, ps, probes, lr, max_length, batch_size, splits, accelerator, retrain,
                                      allow_pickle)
        for split, m in found.items():
            metrics[split].update(m)
        extra = {"probes": {**probes.model_dump(), "relearn_lr": lr}}
    if retrain:
        judge(metrics, read_json(Path(retrain) / "metrics.json")["metrics"], ps)
    result = {"model": str(model_dir), "poisoned_set": str(poisoned_set), "metrics": metrics, **extra, **provenance()}
    if out:
        write_json(out, result)
    return result


def run_probes(stage_dir: Path, poisoned_set: str | Path, cfg, lr: float, max_length: int, batch_size: int,
               splits=("test",), reference: dict | None = None, log=print) -> dict:
    """The grid's probes of a finished stage, written to <stage>/probes.json (kept while the settings are
    the same). reference: ReTrain's probe metrics, for the excess over ReTrain and the variants' verdicts."""
    made = {**cfg.model_dump(), "relearn_lr": lr, "max_length": max_length, "splits": list(splits)}
    path = Path(stage_dir) / "probes.json"
    if path.is_file() and read_json(path).get("config") == made:
        return read_json(path)
    log(f"probing {Path(stage_dir).name}" + (f": relearning on K = {', '.join(map(str, cfg.relearn))}" if cfg.relearn
                                                 else "") + (", trigger variants" if cfg.trigger_variants else ""))
    ps = load_poisoned_set(poisoned_set)
    metrics = _probe(stage_dir, ps, cfg, lr, max_length, batch_size, splits)
    if reference is not None:
        against_retrain(metrics, reference, ps)
    result = {"config": made, "metrics": metrics, **provenance()}
    write_json(path, result)
    return result


# ---------------------------------------------------------------- train (victim and ReTrain)

def train_classifier(rows: list[dict], label_names: list[str], cfg: TrainConfig, out_dir: str | Path, *,
                     retrain: bool = False, accelerator=None, progress: bool = True):
    """Fine-tune cfg.model on `rows` with a fresh head; returns (model, tokenizer, loop state)."""
    accelerator = accelerator or _accelerator(cfg, out_dir)
    set_seed(cfg.seed)  # the new classification head is initialised from the seed
    model, tok, _ = load_classifier(cfg.model, len(label_names), label_names, for_training=True,
                                    trust_remote_code=cfg.trust_remote_code)
    model = _prepare_model(model, cfg, cfg.lora)
    objective = ReTrain() if retrain else CrossEntropy()
    if cfg.class_weights == "balanced":
        objective.class_weight = class_weights([r["label"] for r in rows], len(label_names))
    state = train_loop(model, tok, objective, TokenizedSet(tok, rows, cfg.max_length), LoopConfig.of(cfg), out_dir,
                       accelerator=accelerator, progress=progress)
    return model, tok, state


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
    accelerator = _accelerator(cfg, out_dir)
    rows = ps.clean if clean_only else ps.train
    t0 = time.time()
    model, tok, state = train_classifier(rows, ps.label_names, cfg, out_dir, retrain=clean_only,
                                         accelerator=accelerator, progress=progress)
    train_seconds = time.time() - t0
    metrics = evaluate_sets(model, tok, ps, cfg.max_length, cfg.eval_batch_size, accelerator, eval_splits)
    meta = {"base_model": cfg.model, "label_names": ps.label_names, "target": ps.target,
            "role": "retrain" if clean_only else "victim", "train_config": cfg.model_dump(),
            "lora": cfg.lora.model_dump() if cfg.lora.enabled else None,
            "poisoned_set": str(poisoned_set)}
    result = {"kind": meta["role"], "metrics": metrics, "train_seconds": round(train_seconds, 1),
              "n_train": len(rows), "history": state["history"], "config": cfg.model_dump(),
              "poisoned_set": str(poisoned_set), "poison_meta": ps.meta, **provenance()}
    return _finish(out_dir, model, tok, accelerator, meta, result)


# ---------------------------------------------------------------- unlearn

def needs_base(cfg: UnlearnConfig, model) -> bool:
    """Whether the method needs theta_base for this model (a LoRA model's update is its adapters)."""
    return build_objective(cfg).needs_base and not is_peft(model)


def selection_dev(dev: list[dict] | None, eval_sets: PoisonedSet | None) -> tuple[list[dict], str]:
    """The clean dev rows selection may read, and why there are none. Never triggered rows."""
    if dev is not None:
        return dev, ""
    if eval_sets is None or not eval_sets.dev_clean:
        return [], ""
    if mostly_test_rows(eval_sets.dev_clean, eval_sets.test_clean):
        return [], " (the dev split is the test split, as HSOL's is)"
    return eval_sets.dev_clean, ""


def unlearn_model(model, tok, forget: list[dict], retain: list[dict], cfg: UnlearnConfig, out_dir: str | Path, *,
                  label_names: list[str], base: str | None = None, base_hint: str = BASE_HINT,
                  eval_sets: PoisonedSet | None = None, eval_splits=("test",), accelerator=None,
                  progress: bool = True, dev: list[dict] | None = None, selected_meta: dict | None = None) -> dict:
    """Unlearn `forget` (D_p, with its poisoned labels) from `model`, keeping `retain` (D_c), with
    cfg.method; evaluates on `eval_sets` every cfg.eval_every epochs. Unless cfg.select.action is off,
    chooses the epoch to keep from held-out D_p and the clean `dev` rows (default: eval_sets' clean dev
    rows; without any, a held-out slice of D_c). Returns the loop state, with the selection's summary
    under `select` when one ran."""
    if not forget:
        raise DataError("the poisoned set D_p (forget) is empty; nothing to unlearn")
    out_dir = Path(out_dir)
    accelerator = accelerator or _accelerator(cfg, out_dir)
    model = _prepare_model(model, cfg)
    objective = build_objective(cfg)
    selector = None
    if cfg.select.action != "off" and objective.selectable:
        rows, why = selection_dev(dev, eval_sets)
        selector, forget, retain = Selector.build(cfg.select, forget, retain, rows, cfg.seed, why,
                                                  accelerator.is_main_process)
    if selector is not None:
        selector.prepare(tok, cfg.max_length, cfg.eval_batch_size)
    if objective.needs_base and not is_peft(model):
        if base is None:
            raise BaseModelError(f"{cfg.method}: theta_base, the clean model the victim was fine-tuned from, is "
                                 f"unknown; {base_hint}")
        objective.set_base(base_parameters(model, base))
    if cfg.class_weights == "balanced":
        objective.class_weight = class_weights([r["label"] for r in retain], len(label_names))
    primary = TokenizedSet(tok, forget, cfg.max_length)
    paired = TokenizedSet(tok, retain, cfg.max_length) if objective.uses_clean else None
    # setup() reads them before any update (f_p's outputs on D_p, once: no second model is kept or run).
    objective.data_from(primary, paired, Collator(tok), cfg.eval_batch_size)

    def on_epoch_end(epoch, history):
        entry = {}
        final = epoch == cfg.epochs or objective.should_stop()
        if selector is not None and selector.due(epoch, final):
            # Decided before the evaluation below, and from the selector's rows only: the triggered
            # evaluation sets are for reporting and never reach the decision. Judged, and saved, is the
            # model the method would hand over now (e.g. the negated task vector).
            with objective.result(model, False):
                entry["select"] = chosen = selector.epoch_end(model, epoch, history, final, accelerator)
                if chosen.get("selected") and cfg.select.action == "keep":
                    if accelerator.is_main_process:
                        save_classifier(accelerator.unwrap_model(model), tok, out_dir / "selected" / "model",
                                        {**(selected_meta or {}), "label_names": label_names, "selected_epoch": epoch,
                                         "role": f"unlearned-{cfg.method}-selected"})
                    accelerator.wait_for_everyone()
                    # The model as selected is evaluated now, on all rows: the same numbers as reloading
                    # <out>/selected at the end, without keeping a second model.
                    if eval_sets is not None:
                        chosen["metrics"] = evaluate_sets(model, tok, eval_sets, cfg.max_length,
                                                          cfg.eval_batch_size, accelerator, eval_splits)
            if chosen.get("selected") and cfg.select.action == "stop" and not final:
                entry["stop"] = f"select: {chosen['reason']}"
                final = True
        evaluated = eval_sets is not None and (final or (cfg.eval_every and epoch % cfg.eval_every == 0))
        if not (final or evaluated):
            return entry
        with objective.result(model, final):  # e.g. the negated task vector, kept when final
            if not evaluated:
                return entry
            t, c = time.time(), time.process_time()
            metrics = evaluate_sets(model, tok, eval_sets, cfg.max_length, cfg.eval_batch_size, accelerator,
                                    eval_splits, 0 if final else cfg.eval_subset)
        # The loop's clock runs through evaluations: record them, so cost-to-purify can leave them out.
        return {**entry, "eval": metrics, "eval_seconds": round(time.time() - t, 2),
                "eval_cpu_seconds": round(time.process_time() - c, 2)}

    state = train_loop(model, tok, objective, primary, LoopConfig.of(cfg), out_dir, paired=paired,
                       on_epoch_end=on_epoch_end, accelerator=accelerator, progress=progress,
                       on_start=selector.start if selector is not None else None)
    if selector is not None:
        state["select"] = selector.summary(state["history"])
        if cfg.select.action == "keep" and state["select"]["selected_epoch"] is not None:
            state["select"]["selected_dir"] = str(out_dir / "selected")
    return state


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


def load_victim(model_dir: str | Path, label_names: list[str], allow_pickle: bool = False):
    """(model, tokenizer, meta) of a victim folder; a LoRA victim as base + trainable adapters."""
    if run_meta(model_dir).get("lora") and (Path(model_dir) / "adapter").is_dir():
        from .models import load_lora_victim

        return load_lora_victim(Path(model_dir), len(label_names), label_names)
    return load_classifier(str(model_folder(model_dir)), len(label_names), label_names, allow_pickle=allow_pickle)


def run_unlearn(model_dir: str | Path, poisoned_set: str | Path, cfg: UnlearnConfig, out_dir: str | Path,
                eval_set: str | Path | None = None, eval_splits=("test",), progress: bool = True,
                allow_pickle: bool = False) -> dict:
    """Unlearn the backdoor of a poisoned model with cfg.method (ReTrain: with the victim's settings)."""
    out_dir = Path(out_dir)
    ps = load_unlearning_sets(poisoned_set, eval_set)
    if OBJECTIVES[cfg.method].from_scratch:
        result = run_train(poisoned_set, _retrain_config(model_dir, cfg), out_dir, clean_only=True,
                           eval_splits=eval_splits, progress=progress, eval_set=eval_set)
        write_model_card(out_dir / "model", result)
        return result
    model, tok, meta = load_victim(model_dir, ps.label_names, allow_pickle)
    if not ps.poisoned:
        raise DataError(f"{poisoned_set}: the poisoned set D_p is empty; nothing to unlearn")
    try:
        base, base_source = resolve_base(model_dir, cfg.base_model)
    except BaseModelError:
        if needs_base(cfg, model):
            raise
        base, base_source = None, None  # GA, NPO and RGA without its L2 term only record it
    accelerator = _accelerator(cfg, out_dir)
    t0 = time.time()
    out_meta = {**meta, **({"base_model": base} if base else {}), "role": f"unlearned-{cfg.method}",
                "unlearn_config": cfg.model_dump(), "poisoned_model": str(model_dir)}
    state = unlearn_model(model, tok, ps.poisoned, ps.clean, cfg, out_dir, label_names=ps.label_names, base=base,
                          eval_sets=ps, eval_splits=eval_splits, accelerator=accelerator, progress=progress,
                          selected_meta=out_meta)
    seconds = time.time() - t0
    # From the loop's history, which survives a resume, rather than from this process's memory.
    curve = [{"epoch": h["epoch"], **h["eval"]} for h in state["history"] if "eval" in h]
    final = curve[-1] if curve else {}
    result = {"kind": cfg.method, "metrics": {k: v for k, v in final.items() if k != "epoch"},
              "curve": curve, "history": state["history"], "select": state.get("select"),
              "stopped_early": state["stopped_early"], "unlearn_seconds": round(seconds, 1),
              "n_poisoned": len(ps.poisoned), "n_clean": len(ps.clean), "config": cfg.model_dump(),
              "model": str(model_dir), "base_model": base, "base_model_source": base_source,
              "poisoned_set": str(poisoned_set), "poison_meta": ps.meta, **provenance()}
    _finish(out_dir, model, tok, accelerator, out_meta, result)
    if accelerator.is_main_process:
        write_model_card(out_dir / "model", result)
    return result


def write_model_card(model_dir: Path, result: dict) -> None:
    from .artifacts import atomic_write_text
    from .hub import model_card

    atomic_write_text(model_dir / "README.md", model_card(result))


# ---------------------------------------------------------------- detect

def detect_rows(rows: list[dict], label_names: list[str], cfg: DetectConfig, model=None, tokenizer=None,
                base: tuple[str, str] | None = None) -> Detection:
    """Run cfg.detector on training rows; precision/recall/F1 beside when the rows say which are poisoned."""
    det = build_detector(cfg).detect(rows, label_names, model=model, tokenizer=tokenizer, base=base)
    truth = [bool(r.get("poisoned")) for r in rows]
    det.metrics = precision_recall_f1(det.flags, truth) if any(truth) else None
    return det


def run_detect(model_dir, poisoned_set, cfg: DetectConfig, out: str | Path) -> dict:
    """Detect, write the flagged training set (text, label, poisoned, score) and, when the truth is
    known, precision/recall/F1 beside it (<out>.metrics.json)."""
    ps = load_poisoned_set(poisoned_set)
    cls = DETECTORS[cfg.detector]
    model = tok = base = None
    if cls.needs_victim:
        model, tok, _ = load_classifier(str(model_folder(model_dir)), len(ps.label_names), ps.label_names)
    if cls.needs_base:
        base = resolve_base(model_dir, getattr(cfg, "base_model", None),
                            hint="pass --base-model NAME_OR_PATH (the clean model the victim was fine-tuned from)")
    det = detect_rows(ps.train, ps.label_names, cfg, model, tok, base)
    out = Path(out)
    write_jsonl(out, [{"text": r["text"], "label": r["label"], "poisoned": int(f), "score": float(s)}
                      for r, f, s in zip(ps.train, det.flags, det.scores)])
    result = {"detector": cfg.detector, "metrics": det.metrics, "info": det.info, "config": cfg.model_dump(),
              "model": str(model_dir), "poisoned_set": str(poisoned_set), **provenance()}
    write_json(out.with_suffix(".metrics.json"), result)
    return result
