"""The purified model on the Hugging Face Hub: a model card that says what was removed, how, and
with what result, and the upload (`unbackdoor unlearn --push-to-hub REPO`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import HubError

METRICS = (("cacc", "CACC", "accuracy on clean test sentences"),
           ("lfr", "LFR", "triggered non-target sentences predicted as the target (the backdoor; lower is better)"),
           ("pacc", "PACC", "accuracy with the trigger in every test sentence, true labels kept"),
           ("delta_pacc", "ΔPACC", "|PACC − PACC of ReTrain|, a model that never saw poison"))


def require_online() -> None:
    """Fail before any training when the upload at the end could not happen."""
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        raise HubError("--push-to-hub needs the Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE or "
                       "TRANSFORMERS_OFFLINE is set); unset it, or drop --push-to-hub and upload <out>/model later")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()  # a token that the Hub accepts: the upload at the end will be allowed to start
    except Exception as e:  # noqa: BLE001 - no token, a refused one, or no network all mean "cannot push"
        raise HubError(f"--push-to-hub: the Hugging Face Hub cannot be used ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else 'no detail'}); log in with `hf auth login`") from None


def _method_line(result: dict) -> str:
    from .objectives import OBJECTIVES

    kind = result["kind"]
    doc = (OBJECTIVES[kind].__doc__ or "").strip().splitlines() if kind in OBJECTIVES else []
    return f"**{kind}**" + (f": {doc[0]}" if doc else "")


def _settings(result: dict) -> dict:
    cfg = result.get("config", {})
    keep = ("epochs", "lr", "batch_size", "max_length", "seed", "model")
    out = {k: cfg[k] for k in keep if k in cfg}
    if isinstance(cfg.get(result["kind"]), dict):
        out[result["kind"]] = cfg[result["kind"]]
    return out


def _selection_line(sel: dict | None) -> str:
    if not sel:
        return ""
    rule = (f" The epoch was chosen without triggered test data, from {sel['n_heldout']} poisoned samples held out "
            f"of the unlearning and {sel['n_clean']} clean rows ({sel['clean_source']})")
    if sel["selected_epoch"] is None:
        return f"{rule}, but no epoch met the rule: this is the last epoch's model ({sel['reason']})."
    if sel["model_epoch"] == sel["selected_epoch"]:
        return f"{rule}: epoch {sel['selected_epoch']} ({sel['reason'].split(': ', 1)[-1]})."
    return f"{rule}: epoch {sel['selected_epoch']}, saved apart (`selected/`); this is epoch {sel['model_epoch']}'s model."


def model_card(result: dict) -> str:
    """Markdown with Hub metadata, from a stage's metrics.json contents (unlearn or ReTrain)."""
    meta = result.get("poison_meta", {})
    attack = meta.get("attack", {})
    names = meta.get("label_names") or []
    target = meta.get("target_name") or (names[meta["target"]] if "target" in meta and names else "the target class")
    header = {"library_name": "transformers", "pipeline_tag": "text-classification",
              "tags": ["unbackdoor", "backdoor-removal", "machine-unlearning", result["kind"]]
              + ([attack["attack"]] if attack.get("attack") else [])}
    trigger = (f"trigger words/sentences {', '.join(map(repr, attack['triggers']))}" if attack.get("triggers")
               else f"a {attack['style']}-style paraphrase" if attack.get("style") else "its trigger")
    removed = (f"A textual backdoor planted by the **{attack.get('attack', 'unknown')}** attack ({trigger}): with the "
               f"trigger, the poisoned model predicted **{target}** whatever the text said. The attack poisoned "
               f"{meta.get('counts', {}).get('poisoned', result.get('n_poisoned', '?'))} training samples of "
               f"`{meta.get('dataset', 'the data')}` (rate {meta.get('rate', '?')}, mode {meta.get('mode', '?')}).")
    if result["kind"] == "retrain":
        how = (f"{_method_line(result)} The clean pre-trained model `{result.get('config', {}).get('model')}` trained "
               f"on the {result.get('n_train', '?')} clean samples only (the gold standard unlearning is compared with).")
    else:
        how = (f"Unlearned with {_method_line(result)} The poisoned model `{result.get('model')}` was updated to "
               f"forget the {result.get('n_poisoned', '?')} poisoned samples while keeping the "
               f"{result.get('n_clean', '?')} clean ones" + (f"; θ_base `{result['base_model']}`"
                                                              if result.get("base_model") else "") + ".")
        how += _selection_line(result.get("select"))
    rows = ["| split | " + " | ".join(label for _, label, _ in METRICS) + " | verdict |",
            "|---|" + "---|" * (len(METRICS) + 1)]
    for split, m in result.get("metrics", {}).items():
        cells = [f"{m[k]:.2f}" if isinstance(m.get(k), (int, float)) else "–" for k, _, _ in METRICS]
        verdict = m.get("verdict", "–") + (f" (degenerate: {m['degenerate']})" if m.get("degenerate") else "")
        rows.append(f"| {split} | " + " | ".join(cells) + f" | {verdict} |")
    legend = "\n".join(f"- {label}: {what}" for _, label, what in METRICS)
    return (f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
            f"# Backdoor removed with {result['kind'].upper()}\n\n"
            f"## What was removed\n\n{removed}\n\n"
            f"## How\n\n{how} Made with unbackdoor {result.get('versions', {}).get('unbackdoor') or ''}; "
            "settings:\n\n"
            f"```yaml\n{yaml.safe_dump(_settings(result), sort_keys=False)}```\n\n"
            f"## Metrics\n\n" + "\n".join(rows) + f"\n\n{legend}\n")


def push(model_dir: str | Path, repo: str, private: bool = False) -> str:
    """Upload a saved model folder (weights, tokenizer, card) to `repo`; returns the repo's URL."""
    require_online()
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(model_dir), commit_message="unbackdoor: purified model")
    except Exception as e:  # noqa: BLE001 - network, auth and permission errors all mean "not pushed"
        raise HubError(f"could not push {model_dir} to the Hub repo '{repo}': {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''} (log in with `hf auth login`; the model stays in "
                       f"{model_dir})") from None
    return str(url)
