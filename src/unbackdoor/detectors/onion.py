"""ONION: a language model's outlier words; the samples whose perplexity drops most when one word
is removed are flagged."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from . import register
from .base import Detection, Detector, FlagShare, lowest_fraction


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


def onion_scores(texts: list[str], lm, tok, cfg) -> np.ndarray:
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
    needs_victim = False  # a language model judges the texts alone

    class Settings(FlagShare):
        lm: str = Field("smollm2", description="onion: causal language model (name or path) that scores perplexity")
        onion_top_words: int = Field(0, ge=0, description="onion: try removing only the k most surprising words "
                                     "(0 = every word, as ONION)")

    def detect(self, rows, label_names, model=None, tokenizer=None, base=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model
        from ..training import make_accelerator

        path = resolve_model(self.cfg.lm)
        tok = AutoTokenizer.from_pretrained(path)
        lm = make_accelerator().prepare_model(AutoModelForCausalLM.from_pretrained(path).eval(), evaluation_mode=True)
        scores = onion_scores([r["text"] for r in rows], lm, tok, self.cfg)
        return Detection(scores, lowest_fraction(-scores, self.cfg.fraction),
                         {"lm": self.cfg.lm, "fraction": self.cfg.fraction, "top_words": self.cfg.onion_top_words})
