"""CUBE: cluster the poisoned model's features (the classification head's input); within each label
the rows outside its main cluster are flagged.

Two ways to cluster (`cube_mode`):
- per_label (default): one HDBSCAN per label, min cluster size 5% of the label; the label's other
  clusters are flagged, its noise points are not.
- authors: as the RGA authors' code runs it: one HDBSCAN over all rows, all labels together, min
  cluster size 150 and min_samples 120; within each label, every row outside the label's largest
  group is flagged, noise points included (noise is a group like any other there, as in the CUBE
  code it follows). On small training sets a 150-row cluster may not exist: then nothing is flagged.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field

from ..settings import Settings
from . import register
from .base import Detection, Detector


def cube_flags(embeddings: np.ndarray, labels: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """UMAP to a few dimensions, then HDBSCAN as cfg.cube_mode says (module docstring). Scores are
    distances to the centre of the label's kept cluster in the reduced space."""
    import umap
    from sklearn.cluster import HDBSCAN

    n = len(embeddings)
    reduced = umap.UMAP(n_components=cfg.umap_dim, n_neighbors=min(cfg.umap_neighbors, n - 1),
                        min_dist=cfg.umap_min_dist, metric="cosine", random_state=cfg.seed).fit_transform(embeddings)
    if cfg.cube_mode == "authors":
        return _authors_flags(reduced, labels, cfg)
    flags, scores = np.zeros(n, bool), np.zeros(n)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        size = cfg.min_cluster_size or max(10, int(0.05 * len(idx)))
        if len(idx) < 2 * size:
            continue
        clusters = HDBSCAN(min_cluster_size=size, min_samples=cfg.min_samples).fit_predict(reduced[idx])
        real = clusters[clusters >= 0]
        if len(real) == 0:
            continue
        largest = np.bincount(real).argmax()
        flags[idx] = (clusters >= 0) & (clusters != largest)
        centre = reduced[idx][clusters == largest].mean(0)
        scores[idx] = np.linalg.norm(reduced[idx] - centre, axis=1)
    return flags, scores


AUTHORS_MIN_CLUSTER_SIZE, AUTHORS_MIN_SAMPLES = 150, 120


def _authors_flags(reduced: np.ndarray, labels: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import HDBSCAN

    n = len(reduced)
    size = cfg.min_cluster_size or AUTHORS_MIN_CLUSTER_SIZE
    samples = cfg.min_samples or AUTHORS_MIN_SAMPLES
    flags, scores = np.zeros(n, bool), np.zeros(n)
    if n <= max(size, samples):
        return flags, scores  # no cluster of that size can exist; flagging a whole label would be no detection
    clusters = HDBSCAN(min_cluster_size=size, min_samples=samples).fit_predict(reduced)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        groups, counts = np.unique(clusters[idx], return_counts=True)
        keep = groups[counts.argmax()]  # the label's largest group; noise (-1) counts as a group
        flags[idx] = clusters[idx] != keep
        centre = reduced[idx][clusters[idx] == keep].mean(0)
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
        cube_mode: Literal["per_label", "authors"] = Field(
            "per_label", description="cube: per_label = one HDBSCAN per label, its minority clusters flagged (noise "
            "not); authors = the RGA authors' code: one HDBSCAN over all rows (min cluster size 150, min_samples "
            "120), everything outside each label's largest group flagged, noise included")
        min_cluster_size: Optional[int] = Field(None, ge=2, description="cube: HDBSCAN min cluster size (default: "
                                                "per_label 5% of a class, at least 10; authors 150)")
        min_samples: Optional[int] = Field(None, ge=1, description="cube: HDBSCAN min_samples (default: per_label "
                                           "HDBSCAN's, the min cluster size; authors 120)")

    def detect(self, rows, label_names, model=None, tokenizer=None, base=None):
        from ..training import make_accelerator

        model = make_accelerator().prepare_model(model, evaluation_mode=True)  # its device and precision
        emb = head_inputs(model, tokenizer, rows, self.cfg.max_length, self.cfg.eval_batch_size)
        flags, scores = cube_flags(emb, np.array([r["label"] for r in rows]), self.cfg)
        return Detection(scores, flags, {"umap_dim": self.cfg.umap_dim, "umap_neighbors": self.cfg.umap_neighbors,
                                         "cube_mode": self.cfg.cube_mode})
