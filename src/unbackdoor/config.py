"""Typed configs: YAML files under configs/, validated by pydantic, overridable as `a.b=value`.

Every field has a default that follows the paper; where the authors' public code differs, the
field's description says so and the code's value is one setting away.

The attack, unlearn and detect configs are composed from the registries: each objective's own
settings are a section named after it (`unlearn.rga.beta`), each attack's and detector's are
fields of the stage config (`attack.triggers`, `detect.umap_dim`), so a plug-in's settings are
validated, overridable and command-line options like the built-in ones.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from .attacks import ATTACKS
from .detectors import DETECTORS
from .errors import ConfigError, PluginError
from .objectives import OBJECTIVES, EarlyStopConfig
from .registry import Registry
from .schedules import ScheduleName
from .selection import SelectConfig
from .settings import Settings as Strict


def _flat(name: str, base: type[BaseModel], registry: Registry, doc: str) -> type[BaseModel]:
    """`base` plus the fields of every plug-in's Settings. Plug-ins that share a field (BadNets and
    AddSent: triggers) must declare the same type and default."""
    fields, owner = {}, {}
    for key in registry:
        for f, info in registry[key].Settings.model_fields.items():
            if f in base.model_fields:
                raise PluginError(f"{registry.noun} '{key}': setting '{f}' clashes with the stage setting of that name")
            if f in fields and (fields[f][0], fields[f][1].default) != (info.annotation, info.default):
                raise PluginError(f"{registry.noun} '{key}': setting '{f}' differs from {owner[f]}'s setting of that "
                                  "name (type or default)")
            if f not in fields:
                fields[f], owner[f] = (info.annotation, copy.copy(info)), key
    return create_model(name, __base__=base, __doc__=doc, __module__=__name__, **fields)


def _sections(name: str, base: type[BaseModel], registry: Registry, doc: str) -> type[BaseModel]:
    """`base` plus one section per plug-in that has settings, named after it (unlearn.rga.beta)."""
    fields = {}
    for key in registry:
        settings = registry[key].Settings
        if not settings.model_fields:
            continue
        # unbackdoor.unlearn(**settings) takes a method's settings flat beside the stage's: they must differ.
        clash = sorted(({key} | set(settings.model_fields)) & set(base.model_fields))
        if clash:
            raise PluginError(f"{registry.noun} '{key}': {clash} clash with the stage settings of those names")
        doc_line = (registry[key].__doc__ or key).strip().splitlines()[0]
        fields[key] = (settings, Field(default_factory=settings, description=f"{key}: {doc_line}"))
    return create_model(name, __base__=base, __doc__=doc, __module__=__name__, **fields)


class DataConfig(Strict):
    dataset: str = Field("sst2", description="sst2 | hsol | agnews | a TSV/CSV/JSONL training file | hf:<name>")
    test_file: Optional[str] = Field(None, description="test file for a user dataset (defaults to the named dataset's test split)")
    dev_file: Optional[str] = Field(None, description="validation file for a user dataset")
    data_root: Optional[str] = Field(None, description="folder holding sst2/, hsol/, agnews/, paraphrases/ (default: $UNBACKDOOR_DATA or ../shared/datasets)")
    text_column: str = "text"
    label_column: str = "label"
    label_names: Optional[list[str]] = Field(None, description="class names of a user dataset, in label-index order")
    target: Optional[Union[int, str]] = Field(None, description="attacker's target class, index or name (default: the paper's: SST-2 positive, HSOL non-hate, AG World)")
    agnews_split: Literal["reference", "seeded"] = Field("reference", description="AG News: the authors' 8,000/1,000 rows, or 2,000/250 per class sampled by seed")
    train_size: Optional[int] = Field(None, gt=0, description="use a class-stratified random subset of the training set")
    test_size: Optional[int] = Field(None, gt=0, description="use a class-stratified random subset of the test set")


class _AttackStage(Strict):
    name: str = Field("badnets", description=" | ".join(ATTACKS))
    rate: float = Field(0.5, gt=0, le=1, description="share of non-target training samples to poison (paper 0.5; authors' code 0.1 with mode=add)")
    mode: Literal["replace", "add"] = Field("replace", description="replace: trigger and relabel samples in place (paper); add: append triggered copies (authors' code)")
    poisoned_train: Optional[str] = Field(
        None, description="import the poisoned training rows instead of making them: a TSV/CSV/JSONL file with text, label and a "
        "0/1 'poisoned' column (its poisoned rows are added to the clean training set: mode=add; the rate is measured from the "
        "file), or rga_reference for the authors' file of this dataset and attack. The attack still makes the triggered test sets")


AttackConfig = _flat("AttackConfig", _AttackStage, ATTACKS, "The attack and every attack's own settings.")


class PoisonConfig(Strict):
    data: DataConfig = DataConfig()
    attack: AttackConfig = AttackConfig()
    seed: int = 42


class LoraSettings(Strict):
    enabled: bool = Field(False, description="train LoRA adapters instead of all weights (paper's Llama-2 setting)")
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="modules that get adapters")


# Options of the loop shared by train and unlearn (declared once, listed last in --help).
_ACCUMULATE = Field(1, ge=1, description="micro-batches per optimiser step; batch_size stays the batch of one step "
                    "(the paper's Llama batch of 12 as 3 x 4 on a small GPU)")
_LOG_EVERY = Field(1, ge=1, description="write the loss log and the trackers every k optimiser steps, each value the "
                   "mean over them")
_REPORT_TO = Field("auto", description="experiment tracking through accelerate's trackers, logs in <out>/logs (auto: "
                   "TensorBoard when installed)")
ReportTo = Literal["auto", "tensorboard", "wandb", "none"]


class TrainConfig(Strict):
    model: str = Field("minilm", description="victim: a Hugging Face model name, a local path, 'minilm' (the embedded all-MiniLM-L6-v2) or 'smollm2' (the embedded SmolLM2-135M, a Llama-architecture decoder)")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    max_length: int = Field(128, ge=8)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, on weight matrices only (not on biases "
                                "and LayerNorm weights)")
    grad_clip: float = Field(1.0, ge=0, description="max grad norm (0 = off)")
    scheduler: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    seed: int = 42
    checkpoint_every: int = Field(1, ge=0, description="save a resumable checkpoint every k epochs (0 = only when interrupted)")
    trust_remote_code: bool = Field(False, description="run code shipped with the model (never for untrusted models)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast on GPUs (accelerate)")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory on large models")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight the CE loss by inverse class frequency of the training rows (imbalanced data)")
    group_by_length: bool = Field(True, description="batches of similar length in random order (about 1.8x faster on SST-2); false: plain random batches")
    lora: LoraSettings = LoraSettings()
    gradient_accumulation_steps: int = _ACCUMULATE
    log_every: int = _LOG_EVERY
    report_to: ReportTo = _REPORT_TO


class _UnlearnStage(Strict):
    method: str = Field("rga", description=" | ".join(OBJECTIVES))
    epochs: int = Field(30, ge=1, description="passes over D_p (paper: 30)")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    max_length: int = Field(128, ge=8)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, on weight matrices only")
    grad_clip: float = Field(1.0, ge=0)
    scheduler: ScheduleName = Field(
        "constant", description="lr schedule; constant_then_linear: constant, then a linear decay to 0 over the "
        "last decay_ratio of the steps (a run that must both show GA's shift and end RGA without a swing)")
    decay_ratio: float = Field(0.25, gt=0, le=1, description="constant_then_linear: the share of steps that decay")
    seed: int = 42
    checkpoint_every: int = Field(1, ge=0, description="save a resumable checkpoint every k epochs (0 = only when interrupted)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast on GPUs (accelerate)")
    gradient_checkpointing: bool = False
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight the CE on D_c by inverse class frequency of D_c (imbalanced data)")
    group_by_length: bool = Field(True, description="batches of similar length in random order; false: plain random batches")
    reset_optimizer: bool = Field(False, description="restart AdamW's moments every epoch (authors' code builds a new AdamW per epoch)")
    clean_sampling: Literal["shuffle", "replacement"] = Field(
        "shuffle", description="D_c batches from a shuffled pass, or drawn with replacement (authors' code)")
    eval_every: int = Field(5, ge=0, description="evaluate CACC/LFR/PACC every k epochs (0 = only at the end)")
    eval_subset: int = Field(0, ge=0, description="evaluations before the last use a fixed class-stratified subset of k rows of each evaluation set (0 = all rows); the final model is always evaluated on all")
    base_model: Optional[str] = Field(None, description="theta_base for RGA, the clean model the victim was fine-tuned from; ReTrain trains it for a victim without unbackdoor.json (default: from the victim's unbackdoor.json or config, never the victim itself)")
    early_stop: EarlyStopConfig = EarlyStopConfig()
    select: SelectConfig = Field(default_factory=SelectConfig, description="choose the epoch to keep without a "
                                 "triggered test set (GA, NPO, RGA; not ReTrain): docs/methods.md")
    gradient_accumulation_steps: int = _ACCUMULATE
    log_every: int = _LOG_EVERY
    report_to: ReportTo = _REPORT_TO


UnlearnConfig = _sections("UnlearnConfig", _UnlearnStage, OBJECTIVES,
                          "Unlearning settings, with one section per method that has settings of its own.")


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    cls = model_cls
    for part in loc[:-1]:
        info = cls.model_fields.get(str(part))
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return []
        cls = info.annotation
    return list(cls.model_fields)


def validate(model_cls: type[BaseModel], data: dict, source: str = "config"):
    """Build a typed config, turning pydantic's report into one message per bad field."""
    try:
        return model_cls.model_validate(data or {})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key '{key}'{_suggest(str(err['loc'][-1]), _fields_at(model_cls, err['loc']))}")
            else:
                lines.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file as a dict. `extends: <preset or file>` starts from that config and lays this one over
    it (sections merge key by key; lists and values replace), so a variant states only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (extended by {_chain[-1]})" if _chain else ""))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    if "extends" not in data:
        return data
    base = data.pop("extends")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'extends' must name one preset or config file (got {base!r})")
    # A relative file is taken from the extending file's folder, as a reader of that file would expect.
    near = path.parent / base
    base_path = near if near.suffix in (".yaml", ".yml") and near.is_file() else resolve_config_path(base)
    chain = (*_chain, path.resolve())
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: 'extends: {base}' makes a cycle ({' -> '.join(p.name for p in chain)} -> "
                          f"{base_path.name})")
    return merge_sections(load_yaml(base_path, chain), data)


def merge_sections(base: dict, over: dict) -> dict:
    """`over` laid over `base`: a mapping in both merges key by key, anything else in `over` replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_sections(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{p}' is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key.sub=value` pairs, values parsed as YAML (so 1e-5, true, [a, b] work)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. unlearn.lr=5e-5)")
        key, raw = item.split("=", 1)
        set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return data


def configs_dir() -> Path:
    """The presets shipped inside the package (found wherever it is installed, not only in a checkout)."""
    from importlib.resources import files

    return Path(str(files("unbackdoor") / "configs"))


def presets() -> dict[str, Path]:
    """Preset name -> file: the packaged presets, then ./configs/*.yaml of the working directory, which
    override them (a user's own presets, or edited copies)."""
    found = {p.stem: p for p in configs_dir().glob("*.yaml")}
    local = Path.cwd() / "configs"
    # In the source checkout ./configs links to the packaged folder: that is no override.
    if local.is_dir() and local.resolve() != configs_dir().resolve():
        found.update({p.stem: p for p in local.glob("*.yaml")})
    return dict(sorted(found.items()))


def resolve_config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    found = presets()
    preset = found.get(name_or_path)
    if preset is None:
        raise ConfigError(f"no config file or preset named '{name_or_path}'; presets: {', '.join(found) or '(none)'}")
    if preset.parent != configs_dir() and (configs_dir() / preset.name).is_file():
        import sys

        print(f"note: using {preset}, which shadows the packaged preset '{name_or_path}'", file=sys.stderr)
    return preset


class _DetectStage(Strict):
    detector: str = Field("cube", description=" | ".join(DETECTORS))
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    max_length: int = Field(128, ge=8)
    seed: int = 42


DetectConfig = _flat("DetectConfig", _DetectStage, DETECTORS, "The detector and every detector's own settings.")
