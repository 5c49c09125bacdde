"""Detectors: find the poisoned samples D_p of a training set, so unlearning works end to end.

Each detector returns a score per training sample (higher = more suspicious) and a flag. The
flagged set is written in the format `unbackdoor unlearn --poisoned-set` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .config import DetectConfig
from .errors import ConfigError

DETECTORS: dict[str, type["Detector"]] = {}


def register(cls):
    DETECTORS[cls.name] = cls
    return cls


@dataclass
class Detection:
    scores: np.ndarray
    flags: np.ndarray
    info: dict = field(default_factory=dict)


def precision_recall_f1(flags, truth) -> dict:
    flags, truth = np.asarray(flags, bool), np.asarray(truth, bool)
    tp, fp, fn = int((flags & truth).sum()), int((flags & ~truth).sum()), int((~flags & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "flagged": int(flags.sum()), "poisoned": int(truth.sum())}


def build_detector(cfg: DetectConfig) -> "Detector":
    if cfg.detector not in DETECTORS:
        raise ConfigError(f"unknown detector '{cfg.detector}'; valid detectors: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[cfg.detector](cfg)


class Detector:
    name: ClassVar[str]

    def __init__(self, cfg: DetectConfig):
        self.cfg = cfg

    def detect(self, rows: list[dict], label_names: list[str], model_dir: Path) -> Detection:
        raise NotImplementedError


# ---------------------------------------------------------------- loss (anti-backdoor learning)

def lowest_fraction(losses: np.ndarray, fraction: float) -> np.ndarray:
    """Flag the `fraction` of samples with the lowest loss: backdoor samples are learned first."""
    k = max(1, int(round(fraction * len(losses))))
    flags = np.zeros(len(losses), bool)
    flags[np.argsort(losses, kind="stable")[:k]] = True
    return flags


@register
class LossDetector(Detector):
    name = "loss"

    def detect(self, rows, label_names, model_dir):
        import tempfile

        from .models import load_classifier, resolve_base
        from .pipeline import _accelerator
        from .training import Collator, LoopConfig, TokenizedSet, predict_logits, set_seed, train_loop
        from .unlearning import CrossEntropy

        base, source = resolve_base(
            model_dir, self.cfg.base_model,
            hint="pass --base-model NAME_OR_PATH (the clean model the victim was fine-tuned from)")
        set_seed(self.cfg.seed)
        model, tok, _ = load_classifier(base, len(label_names), label_names, for_training=True)
        data = TokenizedSet(tok, rows, self.cfg.max_length)
        accelerator = _accelerator()  # the loop moves the model to its device: the scoring pass must follow
        with tempfile.TemporaryDirectory() as tmp:
            train_loop(model, tok, CrossEntropy(), data, LoopConfig.of(self.cfg, checkpoint_every=0), tmp,
                       accelerator=accelerator, progress=True)
        logits = predict_logits(model, data, Collator(tok), self.cfg.eval_batch_size, accelerator)
        losses = torch.nn.functional.cross_entropy(logits, torch.tensor(data.labels), reduction="none").numpy()
        # One snapshot after the last epoch. Averaging each row's loss over the epochs was tried and is
        # worse on SST-2 BadNets (precision 0.16 vs 0.37 at 3 epochs, lr 1e-4): before the trigger is
        # learned the poisoned rows are mid-loss (they contradict their text's sentiment).
        return Detection(-losses, lowest_fraction(losses, self.cfg.fraction),
                         {"epochs": self.cfg.epochs, "fraction": self.cfg.fraction, "base_model": base,
                          "base_model_source": source, "mean_loss": round(float(losses.mean()), 4)})


# ---------------------------------------------------------------- CUBE (clustering the poisoned model's features)

def cube_flags(embeddings: np.ndarray, labels: np.ndarray, cfg: DetectConfig) -> tuple[np.ndarray, np.ndarray]:
    """UMAP to a few dimensions, HDBSCAN per label (min cluster size 5% of the label by default); within each label the largest cluster is taken as
    clean and every other cluster as poisoned (noise points stay unflagged). Scores are distances to
    the label's largest cluster centre in the reduced space."""
    import umap
    from sklearn.cluster import HDBSCAN

    n = len(embeddings)
    reduced = umap.UMAP(n_components=cfg.umap_dim, n_neighbors=min(cfg.umap_neighbors, n - 1),
                        min_dist=cfg.umap_min_dist, metric="cosine", random_state=cfg.seed).fit_transform(embeddings)
    flags, scores = np.zeros(n, bool), np.zeros(n)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        size = cfg.min_cluster_size or max(10, int(0.05 * len(idx)))
        if len(idx) < 2 * size:
            continue
        clusters = HDBSCAN(min_cluster_size=size).fit_predict(reduced[idx])
        real = clusters[clusters >= 0]
        if len(real) == 0:
            continue
        largest = np.bincount(real).argmax()
        flags[idx] = (clusters >= 0) & (clusters != largest)
        centre = reduced[idx][clusters == largest].mean(0)
        scores[idx] = np.linalg.norm(reduced[idx] - centre, axis=1)
    return flags, scores


@torch.no_grad()
def head_inputs(model, tok, rows, max_length: int, batch_size: int) -> np.ndarray:
    """The representation the classification head sees (BERT: pooled [CLS]; decoders: last token)."""
    from torch.utils.data import DataLoader

    from .training import MODEL_INPUTS, Collator, TokenizedSet

    k = model.config.num_labels
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == k][-1]
    grabbed = []
    handle = head.register_forward_hook(lambda mod, inp, out: grabbed.append(inp[0].detach()))
    model.eval()
    device = next(model.parameters()).device
    feats = []
    try:
        for batch in DataLoader(TokenizedSet(tok, rows, max_length), batch_size=batch_size, collate_fn=Collator(tok)):
            grabbed.clear()
            batch = {key: batch[key].to(device) for key in MODEL_INPUTS if key in batch}
            model(**batch)
            x = grabbed[-1]
            if x.dim() == 3:  # decoder heads run on every position: keep the last real token
                last = (batch["attention_mask"].sum(1) - 1 if tok.padding_side == "right"
                        else torch.full((x.shape[0],), x.shape[1] - 1, device=device))
                x = x[torch.arange(x.shape[0], device=device), last]
            feats.append(x.float().cpu())
    finally:
        handle.remove()
    return torch.cat(feats).numpy()


@register
class CubeDetector(Detector):
    name = "cube"

    def detect(self, rows, label_names, model_dir):
        from .models import load_classifier, model_folder

        from .pipeline import _accelerator

        model, tok, _ = load_classifier(str(model_folder(model_dir)), len(label_names), label_names)
        model = _accelerator().prepare_model(model, evaluation_mode=True)  # its device and precision
        emb = head_inputs(model, tok, rows, self.cfg.max_length, self.cfg.eval_batch_size)
        flags, scores = cube_flags(emb, np.array([r["label"] for r in rows]), self.cfg)
        return Detection(scores, flags, {"umap_dim": self.cfg.umap_dim, "umap_neighbors": self.cfg.umap_neighbors})


# ---------------------------------------------------------------- ONION (language-model outlier words)

@torch.no_grad()
def token_nll(lm, seqs: list[list[int]], batch_size: int) -> list[np.ndarray]:
    """Negative log-likelihood of every token after the first of each id sequence under a causal LM.
    Sequences are sorted by length so each batch pads little."""
    out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(seqs[i]) for i in chunk)
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            x[row, :len(seqs[i])], mask[row, :len(seqs[i])] = torch.tensor(seqs[i]), 1
        x, mask = x.to(lm.device), mask.to(lm.device)
        logits = lm(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").cpu().numpy()
        for row, i in enumerate(chunk):
            out[i] = nll[row, :len(seqs[i]) - 1]
    return out


def word_tokens(tok, text: str, max_length: int) -> list[list[int]]:
    """Token ids per word (a space before every word but the first, as a BPE tokenizer splits a
    sentence), cut to max_length - 1 tokens so BOS fits: removing a word is dropping its span."""
    spans, used = [], 0
    for i, w in enumerate(text.split()):
        ids = tok(w if i == 0 else " " + w, add_special_tokens=False)["input_ids"][:max_length - 1 - used]
        if not ids:
            break
        spans.append(ids)
        used += len(ids)
    return spans


def onion_scores(texts: list[str], lm, tok, cfg: DetectConfig) -> np.ndarray:
    """Per sample, the largest drop in log-perplexity from removing one word (ONION's suspicion score,
    on log perplexity so that long and short sentences compare). A trigger word or a rare token is an
    outlier for the LM; removing a normal word barely changes the perplexity.

    With `onion_top_words` = k > 0 only the k words with the highest surprisal in the full sentence
    are tried: k + 1 LM passes per sample instead of one per word (a trigger is itself surprising)."""
    from tqdm.auto import tqdm

    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    join = lambda spans: [bos] + [t for s in spans for t in s]  # noqa: E731
    scores = np.zeros(len(texts))
    chunk = 128  # texts per round: bounds memory and lets the progress bar move
    for start in tqdm(range(0, len(texts), chunk), desc="onion", mininterval=30):
        spans = [word_tokens(tok, t, cfg.max_length) for t in texts[start:start + chunk]]
        full = token_nll(lm, [join(s) for s in spans], cfg.eval_batch_size)
        tried = []
        for s, nll in zip(spans, full):
            words = list(range(len(s))) if len(s) > 1 else []
            if cfg.onion_top_words and len(words) > cfg.onion_top_words:
                ends = np.cumsum([len(w) for w in s])
                surprisal = [nll[e - len(w):e].sum() for w, e in zip(s, ends)]
                words = sorted(np.argsort(surprisal)[::-1][:cfg.onion_top_words].tolist())
            tried.append(words)
        cands = [join(s[:i] + s[i + 1:]) for s, ws in zip(spans, tried) for i in ws]
        cand_nll = token_nll(lm, cands, cfg.eval_batch_size)
        pos = 0
        for j, (nll, ws) in enumerate(zip(full, tried)):
            if ws:
                scores[start + j] = nll.mean() - min(c.mean() for c in cand_nll[pos:pos + len(ws)])
            pos += len(ws)
    return scores


@register
class OnionDetector(Detector):
    """ONION (Qi et al., 2021) as a training-set detector: flag the `fraction` of samples whose
    perplexity drops most when one word is removed. Built for word triggers; a trigger sentence or a
    syntactic/style trigger has no single outlier word, so expect it to miss those."""
    name = "onion"

    def detect(self, rows, label_names, model_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models import resolve_model

        path = resolve_model(self.cfg.lm)
        tok = AutoTokenizer.from_pretrained(path)
        from .pipeline import _accelerator

        lm = _accelerator().prepare_model(AutoModelForCausalLM.from_pretrained(path).eval(), evaluation_mode=True)
        scores = onion_scores([r["text"] for r in rows], lm, tok, self.cfg)
        return Detection(scores, lowest_fraction(-scores, self.cfg.fraction),
                         {"lm": self.cfg.lm, "fraction": self.cfg.fraction, "top_words": self.cfg.onion_top_words})


def run_detect(model_dir, poisoned_set, cfg: DetectConfig, out: str | Path) -> dict:
    """Detect, write the flagged training set (text, label, poisoned, score) and, when the truth is
    known, precision/recall/F1 beside it (<out>.metrics.json)."""
    from .artifacts import provenance, write_json, write_jsonl
    from .attacks import load_poisoned_set

    ps = load_poisoned_set(poisoned_set)
    det = build_detector(cfg).detect(ps.train, ps.label_names, Path(model_dir))
    out = Path(out)
    write_jsonl(out, [{"text": r["text"], "label": r["label"], "poisoned": int(f), "score": float(s)}
                      for r, f, s in zip(ps.train, det.flags, det.scores)])
    truth = [bool(r.get("poisoned")) for r in ps.train]
    result = {"detector": cfg.detector, "metrics": precision_recall_f1(det.flags, truth) if any(truth) else None,
              "info": det.info, "config": cfg.model_dump(), "model": str(model_dir),
              "poisoned_set": str(poisoned_set), **provenance()}
    write_json(out.with_suffix(".metrics.json"), result)
    return result
