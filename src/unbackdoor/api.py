"""The Python API: the stages of the command line on objects in memory (a model and its tokenizer, a
`datasets.Dataset`, a pandas frame, a list of (text, label) pairs) as well as on paths. Each
function is a thin layer over the stage functions in stages.py, which the command line runs too.

Settings are keyword arguments with the names of the command line's config fields
(`epochs=2, lr=1e-4`); a method's own settings may be given flat (`beta=0.01` with method="rga")
or as its section (`rga={"beta": 0.01}`). A misspelt setting or bad data raises an
UnbackdoorError (a ConfigError or DataError) that names it. See docs/api.md.
"""

from __future__ import annotations

import contextlib
import difflib
import tempfile
from pathlib import Path

from . import stages
from .artifacts import read_json, read_jsonl
from .config import AttackConfig, DataConfig, DetectConfig, PoisonConfig, TrainConfig, UnlearnConfig, validate
from .data import LabeledData, rows_from
from .detectors import DETECTORS, Detection
from .errors import BaseModelError, ConfigError, DataError
from .models import load_classifier, model_folder, resolve_base, run_meta
from .objectives import OBJECTIVES
from .poisoned_set import PoisonedSet, load_poisoned_set, load_unlearning_sets, save_poisoned_set
from .verdict import Verdict, decide

BASE_HINT = ("pass base_model=NAME_OR_PATH (the clean pre-trained model the victim was fine-tuned from, e.g. "
             "'minilm'), or drop RGA's L2 term with beta=0")


# ---------------------------------------------------------------- arguments

def _unknown(key: str, valid, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return ConfigError(f"{where}: unknown setting '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))


def _stage_config(cls, values: dict, where: str, scratch: bool):
    """Validated stage config. In a temporary working folder checkpoints and tracker logs would be
    deleted unread: they are off there unless asked for."""
    if scratch:
        values = {"checkpoint_every": 0, "report_to": "none", **values}
    return validate(cls, values, source=f"{where} settings")


@contextlib.contextmanager
def _workdir(out):
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        yield Path(out)
    else:
        with tempfile.TemporaryDirectory(prefix="unbackdoor-") as tmp:
            yield Path(tmp)


def _poisoned_set(data, field: str) -> PoisonedSet:
    if isinstance(data, PoisonedSet):
        return data
    if isinstance(data, (str, Path)):
        return load_poisoned_set(data)
    raise DataError(f"{field}: expected a PoisonedSet (from unbackdoor.poison) or a poisoned-set folder, "
                    f"got {type(data).__name__}")


def _label_names(model) -> list[str]:
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


def _model(model, tokenizer, field: str = "model"):
    """(model, tokenizer, folder or None): a model in memory, or one loaded from a run or model folder."""
    if isinstance(model, (str, Path)):
        names = run_meta(model).get("label_names")
        loaded, tok, _ = stages.load_victim(model, names) if names else load_classifier(str(model_folder(model)))
        return loaded, tokenizer or tok, Path(model)
    if model is None or not hasattr(model, "config"):
        raise ConfigError(f"{field}: expected a transformers sequence classifier or a model folder, "
                          f"got {type(model).__name__}")
    if tokenizer is None:
        raise ConfigError(f"{field}: a model in memory needs its tokenizer: pass tokenizer=")
    folder = Path(getattr(model, "name_or_path", "") or ".")
    # A model loaded from one of our folders knows its theta_base from there; any other may be the base itself.
    return model, tokenizer, folder if run_meta(folder) else None


def _base(option: str | None, folder: Path | None) -> tuple[str | None, str | None]:
    if option:
        return option, "option"
    if folder is None:
        return None, None
    try:
        return resolve_base(folder, hint=BASE_HINT)
    except BaseModelError:
        return None, None


def _curve(state: dict, log_path: Path) -> list[dict]:
    """One entry per epoch: the means of the logged training values, and the evaluation when there was one."""
    lines = read_jsonl(log_path) if log_path.is_file() else []
    curve = []
    for h in state["history"]:
        logged = [ln for ln in lines if ln["epoch"] == h["epoch"]]
        keys = dict.fromkeys(k for ln in logged for k in ln if k not in ("step", "epoch", "lr"))
        means = {k: sum(ln[k] for ln in logged if k in ln) / sum(k in ln for ln in logged) for k in keys}
        curve.append({"epoch": h["epoch"], **means, **h.get("eval", {}),
                      **({"select": h["select"]} if "select" in h else {})})
    return curve


# ---------------------------------------------------------------- the stages

def poison(data, attack: str = "badnets", *, test=None, dev=None, target=None, label_names=None,
           text_column: str = "text", label_column: str = "label", seed: int = 42, generator=None, out=None,
           **settings) -> PoisonedSet:
    """Poison a training set and build the triggered test sets (the trigger in every class).

    data: a dataset name (sst2, hsol, agnews), a TSV/CSV/JSONL file, `hf:<name>`, or training rows in
    memory (datasets.Dataset, pandas frame, list of (text, label)); in memory, `test` holds the test
    rows and `target` (a class name or index) is required. settings: attack settings (rate, mode,
    triggers, ...) and data settings (train_size, test_size, test_file, ...). out: also save it there.
    """
    attack_settings = {k: v for k, v in settings.items() if k in AttackConfig.model_fields}
    data_settings = {k: v for k, v in settings.items() if k in DataConfig.model_fields}
    for key in settings.keys() - attack_settings.keys() - data_settings.keys():
        raise _unknown(key, [*AttackConfig.model_fields, *DataConfig.model_fields], "poison")
    named = isinstance(data, (str, Path))
    data_cfg = validate(DataConfig, {"dataset": str(data) if named else "in-memory", "target": target,
                                     "label_names": label_names, "text_column": text_column,
                                     "label_column": label_column, **data_settings}, source="poison data settings")
    cfg = PoisonConfig(data=data_cfg, attack=validate(AttackConfig, {"name": attack, **attack_settings},
                                                      source="poison attack settings"), seed=seed)
    if named:
        from .data import load_data

        labeled = load_data(data_cfg, seed=seed)
    else:
        labeled = _labeled(data, test, dev, data_cfg, seed)
    ps = stages.poison_data(labeled, cfg, generator)
    if out is not None:
        from .artifacts import provenance

        save_poisoned_set(ps, out, {"config": cfg.model_dump(), **provenance()})
    return ps


def _labeled(data, test, dev, cfg: DataConfig, seed: int) -> LabeledData:
    from .data import subsample, target_index

    if any(getattr(cfg, k) for k in ("test_file", "dev_file", "data_root")):
        raise ConfigError("poison: test_file, dev_file and data_root are for a dataset named by path; with rows in "
                          "memory pass test= and dev=")
    train, names = rows_from(data, "data", cfg.text_column, cfg.label_column, cfg.label_names)
    if test is None:
        raise DataError("poison: rows in memory need test= (the test rows the triggered test sets are built from)")
    test_rows = rows_from(test, "test", cfg.text_column, cfg.label_column, names)[0]
    dev_rows = rows_from(dev, "dev", cfg.text_column, cfg.label_column, names)[0] if dev is not None else []
    if cfg.target is None:
        raise DataError(f"poison: pass target=, the class the trigger is to mean (a name or index of {names})")
    labeled = LabeledData("in-memory", names, target_index(cfg.target, names, None, "target"), train, test_rows,
                          dev_rows)
    return subsample(labeled, cfg, seed)


def train_victim(data, model: str = "minilm", *, clean_only: bool = False, label_names=None, out=None,
                 progress: bool = False, **settings):
    """Fine-tune `model` (a name, a path, 'minilm') on a poisoned set, or on its clean rows only
    (clean_only: ReTrain). data: a PoisonedSet, a poisoned-set folder, or labelled rows in memory.
    settings: the train settings (epochs, lr, batch_size, max_length, ...). out: the working folder
    (loss log; a checkpoint to resume from), a temporary one by default. Returns (model, tokenizer).
    """
    cfg = _stage_config(TrainConfig, {"model": model, **settings}, "train_victim", scratch=out is None)
    if isinstance(data, (PoisonedSet, str, Path)):
        ps = data if isinstance(data, PoisonedSet) else load_unlearning_sets(data)
        rows, names = (ps.clean if clean_only else ps.train), ps.label_names
    elif clean_only:
        raise DataError("train_victim: clean_only needs a PoisonedSet, which says which rows are poisoned")
    else:
        rows, names = rows_from(data, "data", label_names=label_names)
    with _workdir(out) as work:
        trained, tok, _ = stages.train_classifier(rows, names, cfg, work, retrain=clean_only, progress=progress)
    return trained.eval(), tok


def unlearn(model, tokenizer=None, *, forget, retain, method: str = "rga", eval_data=None, dev=None, out=None,
            progress: bool = False, **settings):
    """Unlearn the samples `forget` (D_p, with their poisoned labels) from a poisoned model while keeping
    `retain` (D_c), with `method` (ga, npo, rga, retrain or a plug-in).

    model: a transformers classifier (with `tokenizer`) or a model folder. forget, retain: rows as
    lists of dicts or (text, label) pairs, datasets.Dataset or pandas frames (e.g. ps.poisoned and
    ps.clean, or Detection.split(...)). eval_data: a PoisonedSet to evaluate on every eval_every
    epochs. dev: clean labelled rows the epoch selection (select=...) measures clean accuracy on
    (default: eval_data's clean dev rows; without any, a slice of `retain` held out of training);
    no triggered rows are ever used to select. settings: the unlearn settings and the method's own
    (alpha=, beta=, or rga={...}); base_model= names theta_base where the method needs it.

    Returns (model, curve): the unlearned model, in eval mode, and one dict per epoch with the mean
    of each logged value (ce_p, ce_c, lambda, l2, ...), where evaluated {split: metrics}, and where
    checked the selection's statistics under "select" ("selected": True on the selected epoch, with
    its "reason"). With the default select={"action": "stop"} the model is the selected epoch's.
    ReTrain returns a new model: base_model trained on `retain` with these settings (epochs, lr, ...).
    """
    cls = OBJECTIVES[method]
    values, own = {"method": method}, cls.Settings.model_fields
    for key, value in settings.items():
        if key in UnlearnConfig.model_fields:
            values[key] = {**values.get(key, {}), **value} if key == method and isinstance(value, dict) else value
        elif key in own:
            values[method] = {**values.get(method, {}), key: value}
        else:
            raise _unknown(key, [*UnlearnConfig.model_fields, *own], f"unlearn(method={method!r})")
    cfg = _stage_config(UnlearnConfig, values, f"unlearn(method={method!r})", scratch=out is None)
    model, tokenizer, folder = _model(model, tokenizer)
    names = _label_names(model)
    forget_rows = rows_from(forget, "forget", label_names=names)[0]
    retain_rows = rows_from(retain, "retain", label_names=names)[0]
    eval_sets = _poisoned_set(eval_data, "eval_data") if eval_data is not None else None
    dev_rows = rows_from(dev, "dev", label_names=names)[0] if dev is not None else None
    if cfg.select.action == "keep" and out is None and not cls.from_scratch:
        raise ConfigError(f"unlearn(method={method!r}): select action 'keep' saves the selected model to "
                          "<out>/selected: pass out=")
    base, _ = _base(cfg.base_model, folder)
    with _workdir(out) as work:
        if cls.from_scratch:
            if base is None:
                raise BaseModelError(f"{method} trains the clean model on `retain`, which is unknown; {BASE_HINT}")
            tcfg = TrainConfig(**{k: v for k, v in cfg.model_dump().items() if k in TrainConfig.model_fields},
                               model=base)
            model, tokenizer, state = stages.train_classifier(retain_rows, names, tcfg, work, retrain=True,
                                                              progress=progress)
            if eval_sets is not None:
                state["history"][-1]["eval"] = stages.evaluate_sets(model, tokenizer, eval_sets, cfg.max_length,
                                                                    cfg.eval_batch_size)
        else:
            state = stages.unlearn_model(model, tokenizer, forget_rows, retain_rows, cfg, work, label_names=names,
                                         base=base, base_hint=BASE_HINT, eval_sets=eval_sets, progress=progress,
                                         dev=dev_rows)
        curve = _curve(state, work / "loss_log.jsonl")
    return model.eval(), curve


def evaluate(model, tokenizer=None, data=None, *, retrain=None, split: str = "test", max_length: int = 128,
             batch_size: int = 128, relearn=(), trigger_variants: bool = False, **probe_settings) -> tuple[dict, Verdict]:
    """CACC, LFR, PACC, the confusion matrices and the trigger-shift gap of `model` on a poisoned set's
    clean and triggered `split`, and the verdict (backdoor, shifted, neutralised) against ReTrain.

    retrain: ReTrain's metrics (the dict this function returns for it) or a ReTrain run folder; without
    it the verdict is "no verdict". Returns (metrics, verdict); with retrain, metrics also has dPACC.

    relearn: K values; for each, a copy of the model is fine-tuned on K poisoned training samples of `data`
    and metrics gets relearn_lfr_K (relearn_cacc_K, relearn_pacc_K); with retrain as a run folder, its model
    is relearned the same way (retrain_relearn_lfr_K, relearn_lfr_excess_K). trigger_variants: metrics gets
    trigger_variants, one block of metrics per variant of the attack's trigger. probe_settings:
    relearn_steps, relearn_lr, relearn_batch_size, seed (probes.ProbeConfig).
    """
    from .probes import ProbeConfig, relearn_lr, relearn_sets

    ps = _poisoned_set(data, "data")
    if split not in ("test", "dev"):
        raise ConfigError(f"evaluate: split must be 'test' or 'dev', got {split!r}")
    probes = validate(ProbeConfig, {"relearn": list(relearn), "trigger_variants": trigger_variants, **probe_settings},
                      source="evaluate probe settings")
    if probes.relearn:
        relearn_sets(ps, probes.relearn, probes.relearn_mix, probes.seed)  # a K the set cannot fill fails before any work
    model, tokenizer, folder = _model(model, tokenizer)
    metrics = stages.evaluate_sets(model, tokenizer, ps, max_length, batch_size, None, (split,)).get(split)
    if metrics is None:
        raise DataError(f"data: the poisoned set has no clean and triggered {split} rows to evaluate on")
    if probes.enabled:
        lr = probes.relearn_lr or relearn_lr(run_meta(folder) if folder else {})
        folder_of_retrain = retrain if isinstance(retrain, (str, Path)) else None
        found = stages.probe_against_retrain(model, tokenizer, ps, probes, lr, max_length, batch_size, (split,),
                                             retrain=folder_of_retrain)
        if isinstance(retrain, dict):  # what evaluate() returned for ReTrain, with the same probes
            stages.against_retrain(found, {split: retrain}, ps)
        metrics.update(found.get(split, {}))
    if retrain is None:
        return metrics, decide(metrics, None, ps.target, ps.label_names)
    if isinstance(retrain, (str, Path)):
        reference = read_json(Path(retrain) / "metrics.json")["metrics"].get(split)
    elif isinstance(retrain, dict):
        reference = retrain
    else:
        raise ConfigError(f"retrain: expected ReTrain's metrics (a dict) or its run folder, got {type(retrain).__name__}")
    if not reference or "confusion_triggered" not in reference:
        raise DataError(f"retrain: no {split} metrics with confusion matrices to compare with")
    if len(reference["confusion_triggered"]) != len(ps.label_names):
        raise DataError(f"retrain: its metrics have {len(reference['confusion_triggered'])} classes, the data "
                        f"{len(ps.label_names)}")
    return metrics, stages.judge({split: metrics}, {split: reference}, ps)[split]


def detect(model=None, tokenizer=None, data=None, *, detector: str = "cube", label_names=None,
           **settings) -> Detection:
    """Flag the poisoned samples of a training set with `detector` (cube, loss, onion or a plug-in).

    data: a PoisonedSet or its folder (its training rows; precision/recall/F1 in .metrics, as the truth
    is known) or labelled rows in memory. model, tokenizer: the poisoned model, for the detectors that
    read it. settings: the detect settings (fraction, umap_dim, base_model, ...). Returns a Detection:
    .scores, .flags, .metrics, and .split(rows) -> (flagged, the others) to unlearn with.
    """
    cfg = validate(DetectConfig, {"detector": detector, **settings}, source="detect settings")
    cls = DETECTORS[detector]
    if isinstance(data, (PoisonedSet, str, Path)):
        ps = _poisoned_set(data, "data")
        rows, names = ps.train, ps.label_names
    else:
        rows, names = rows_from(data, "data", label_names=label_names)
    folder = None
    if cls.needs_victim or (cls.needs_base and model is not None):
        if model is None:
            raise ConfigError(f"detect(detector={detector!r}) reads the poisoned model: pass model= and tokenizer=")
        model, tokenizer, folder = _model(model, tokenizer)
    base = None
    if cls.needs_base:
        base = _base(getattr(cfg, "base_model", None), folder)
        if base[0] is None:
            raise BaseModelError(f"detect(detector={detector!r}) needs theta_base; pass base_model=NAME_OR_PATH "
                                 "(the clean model the victim was fine-tuned from)")
    return stages.detect_rows(rows, names, cfg, model, tokenizer, base)
