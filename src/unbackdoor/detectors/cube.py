"""CUBE: cluster the poisoned model's features (the classification head's input) per label; within
each label the minority clusters are flagged."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from pydantic import Field

from ..settings import Settings
from . import register
from .base import Detection, Detector


def cube_flags(embeddings: np.ndarray, labels: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
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

    from ..batches import MODEL_INPUTS, Collator, TokenizedSet

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

    class Settings(Settings):
        umap_dim: int = Field(4, ge=2, description="cube: UMAP output dimensions (authors: 4)")
        umap_neighbors: int = Field(100, ge=2, description="cube: UMAP neighbours (authors: 100)")
        umap_min_dist: float = Field(0.25, ge=0, description="cube: UMAP min_dist (authors: 0.25)")
        min_cluster_size: Optional[int] = Field(None, ge=2, description="cube: HDBSCAN min cluster size (default 5% "
                                                "of a class, at least 10)")

    def detect(self, rows, label_names, model=None, tokenizer=None, base=None):
        from ..training import make_accelerator

        model = make_accelerator().prepare_model(model, evaluation_mode=True)  # its device and precision
        emb = head_inputs(model, tokenizer, rows, self.cfg.max_length, self.cfg.eval_batch_size)
        flags, scores = cube_flags(emb, np.array([r["label"] for r in rows]), self.cfg)
        return Detection(scores, flags, {"umap_dim": self.cfg.umap_dim, "umap_neighbors": self.cfg.umap_neighbors})
