"""Typed configs: YAML files under configs/, validated by pydantic, overridable as `a.b=value`.

Every field has a default that follows the paper; where the authors' public code differs, the
field's description says so and the code's value is one setting away.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class AttackConfig(Strict):
    name: str = Field("badnets", description="badnets | addsent | hiddenkiller | stylebkd | precomputed (triggered texts from bank files only)")
    rate: float = Field(0.5, gt=0, le=1, description="share of non-target training samples to poison (paper 0.5; authors' code 0.1 with mode=add)")
    mode: Literal["replace", "add"] = Field("replace", description="replace: trigger and relabel samples in place (paper); add: append triggered copies (authors' code)")
    triggers: Optional[list[str]] = Field(None, description="BadNets words (default cf, bb, ak, mn) or AddSent sentences (default per dataset)")
    num_insertions: int = Field(1, ge=1, description="how many triggers are inserted into one text (insertion attacks)")
    bank: Optional[list[str]] = Field(None, description="paraphrase sources: shared, rga_reference, or TSV/CSV/JSONL files with text,paraphrase columns")
    generator: Optional[str] = Field(None, description="local seq2seq model path that paraphrases texts the bank lacks")
    style: Optional[str] = Field(None, description="style of the paraphrases in bank files and from the generator, recorded in meta.json (default: unknown)")
    poisoned_train: Optional[str] = Field(
        None, description="import the poisoned training rows instead of making them: a TSV/CSV/JSONL file with text, label and a "
        "0/1 'poisoned' column (its poisoned rows are added to the clean training set: mode=add; the rate is measured from the "
        "file), or rga_reference for the authors' file of this dataset and attack. The attack still makes the triggered test sets")


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


class TrainConfig(Strict):
    model: str = Field("minilm", description="victim: a Hugging Face model name, a local path, 'minilm' (the embedded all-MiniLM-L6-v2) or 'smollm2' (the embedded SmolLM2-135M, a Llama-architecture decoder)")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    max_length: int = Field(128, ge=8)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
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


class RGAConfig(Strict):
    alpha: float = Field(2.0, ge=0, description="decay rate of lambda = exp(-alpha * KL)")
    beta: float = Field(1e-2, ge=0, description="weight of ||theta - theta_base|| (paper: 1e-2 BERT, 1e-4 Llama-2; authors' code 0.05)")
    kl_direction: Literal["current_poisoned", "poisoned_current"] = Field(
        "current_poisoned", description="KL(f_theta || f_p) (paper) or KL(f_p || f_theta) (authors' code)")
    lambda_mode: Literal["batch", "sample"] = Field("batch", description="one lambda per batch from the mean KL, or one per sample")
    l2: Literal["global", "per_tensor"] = Field("global", description="one L2 norm over all parameters (paper) or a sum of per-tensor norms (authors' code)")
    ascent_step: Literal["joint", "separate"] = Field(
        "joint", description="joint: -lambda*CE(D_p) is part of the one loss AdamW steps on (paper); separate: the ascent has "
        "its own Adam moments and lambda scales its step, not its gradient (AdamW's per-coordinate normalisation "
        "otherwise undoes lambda on weights only D_p uses, e.g. a rare trigger word's embedding)")
    lambda_floor: Literal["keep", "remove"] = Field(
        "keep", description="keep: lambda = exp(-alpha*KL) (paper); remove: rescale so lambda reaches 0 where KL(f_theta||f_p) "
        "reaches its maximum, log(1/min_c f_p(c|x)) (otherwise lambda never falls below min_c f_p(c|x)^alpha)")


class NPOConfig(Strict):
    beta: float = Field(0.1, gt=0, description="NPO inverse temperature (authors' code: 1)")


class EarlyStopConfig(Strict):
    criterion: Literal["off", "lambda", "target_rate"] = Field(
        "off", description="stop when RGA's lambda, or the share of D_p still predicted as the target, stays below threshold")
    threshold: float = Field(0.05, ge=0, le=1)
    patience: int = Field(20, ge=1, description="consecutive steps below threshold")


class UnlearnConfig(Strict):
    method: str = Field("rga", description="ga | npo | rga | retrain")
    epochs: int = Field(30, ge=1, description="passes over D_p (paper: 30)")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    max_length: int = Field(128, ge=8)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    scheduler: Literal["linear", "constant"] = "constant"
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
    rga: RGAConfig = RGAConfig()
    npo: NPOConfig = NPOConfig()
    early_stop: EarlyStopConfig = EarlyStopConfig()


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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


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


class DetectConfig(Strict):
    detector: str = Field("cube", description="cube | loss | onion")
    fraction: float = Field(0.25, gt=0, lt=1, description="loss, onion: share of the training set to flag (lowest loss / largest perplexity drop)")
    epochs: int = Field(1, ge=1, description="loss: epochs of fine-tuning from the clean base; then the lowest-loss rows are flagged (the trigger must get learned first: on MiniLM/SST-2, 3 epochs at 1e-4)")
    lr: float = Field(2e-5, gt=0, description="loss: learning rate of that fine-tuning")
    base_model: Optional[str] = Field(None, description="loss: the clean model the victim was fine-tuned from (default: from its unbackdoor.json or config)")
    umap_dim: int = Field(4, ge=2, description="cube: UMAP output dimensions (authors: 4)")
    umap_neighbors: int = Field(100, ge=2, description="cube: UMAP neighbours (authors: 100)")
    umap_min_dist: float = Field(0.25, ge=0, description="cube: UMAP min_dist (authors: 0.25)")
    min_cluster_size: Optional[int] = Field(None, ge=2, description="cube: HDBSCAN min cluster size (default 5% of a class, at least 10)")
    lm: str = Field("smollm2", description="onion: causal language model (name or path) that scores perplexity")
    onion_top_words: int = Field(0, ge=0, description="onion: try removing only the k most surprising words (0 = every word, as ONION)")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    max_length: int = Field(128, ge=8)
    seed: int = 42
