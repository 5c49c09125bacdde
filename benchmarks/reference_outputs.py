"""Precomputed reference outputs (ours) vs a live reference model (the authors' deep copy).

For GA, NPO and RGA, and NPO/RGA with a deep-copied poisoned model run forward at every step,
each variant runs in its own fresh process (so peak memory is its own), in interleaved rounds.
Reports time per unlearning step and peak resident memory, and their ratios to GA.

    python benchmarks/reference_outputs.py --steps 12 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved, write_results  # noqa: E402

VARIANTS = ["ga", "npo", "rga", "npo_live", "rga_live"]


def child(variant: str, steps: int, batch: int) -> dict:
    import torch

    from unbackdoor.config import DataConfig, UnlearnConfig
    from unbackdoor.data import load_data
    from unbackdoor.attacks import build_poisoner, poison_dataset
    from unbackdoor.config import AttackConfig
    from unbackdoor.models import base_parameters, load_classifier
    from unbackdoor.batches import Collator, TokenizedSet, forward_logits, predict_logits
    from unbackdoor.training import set_seed
    from unbackdoor.objectives import build_objective

    set_seed(0)
    data = load_data(DataConfig(dataset="sst2", train_size=2000))
    ps = poison_dataset(data, build_poisoner(AttackConfig(), data), AttackConfig())
    model, tok, _ = load_classifier("minilm", 2, data.label_names, for_training=True)
    method = variant.split("_")[0]
    cfg = UnlearnConfig(method=method)
    kwargs = {"base_params": base_parameters(model, "minilm")} if method == "rga" else {}
    obj = build_objective(cfg, **kwargs)
    collate = Collator(tok)
    dp = TokenizedSet(tok, ps.poisoned[: steps * batch], 64)
    dc = TokenizedSet(tok, ps.clean[: steps * batch], 64)
    if obj.needs_reference:
        obj.set_reference(predict_logits(model, dp, collate, 128))
    if variant.endswith("_live"):
        ref_model = copy.deepcopy(model).eval()  # what the authors' code keeps: a second model
        for p in ref_model.parameters():
            p.requires_grad_(False)

        def live_reference(batch):
            with torch.no_grad():
                return forward_logits(ref_model, batch)

        obj.reference = live_reference
    obj.setup(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    loader_p = torch.utils.data.DataLoader(dp, batch_size=batch, collate_fn=collate)
    loader_c = torch.utils.data.DataLoader(dc, batch_size=batch, collate_fn=collate)
    times = []
    for bp, bc in zip(loader_p, loader_c):
        t0 = time.perf_counter()
        loss, _ = obj(model, bp, bc)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "step_seconds": statistics.median(times[1:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reference_outputs"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.steps, a.batch)))
        return
    runs = interleaved(__file__, VARIANTS, a.rounds, ["--steps", str(a.steps), "--batch", str(a.batch)])
    summary = {}
    for v in VARIANTS:
        rs = [x for x in runs if x["variant"] == v]
        summary[v] = {"step_seconds": statistics.median(x["step_seconds"] for x in rs),
                      "peak_rss_mb": max(x["peak_rss_mb"] for x in rs)}
    ga = summary["ga"]
    for v in VARIANTS:
        summary[v]["time_vs_ga"] = summary[v]["step_seconds"] / ga["step_seconds"]
        summary[v]["memory_vs_ga"] = summary[v]["peak_rss_mb"] / ga["peak_rss_mb"]
    lines = ["| variant | s / step | peak RSS (MB) | time / GA | memory / GA |", "|---|---|---|---|---|"]
    for v in VARIANTS:
        s = summary[v]
        lines.append(f"| {v} | {s['step_seconds']:.3f} | {s['peak_rss_mb']:.0f} | {s['time_vs_ga']:.2f} | "
                     f"{s['memory_vs_ga']:.3f} |")
    write_results(a.out, {"args": vars(a), "runs": runs, "summary": summary}, lines)


if __name__ == "__main__":
    main()
