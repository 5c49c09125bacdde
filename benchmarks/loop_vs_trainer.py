"""Our training loop vs the Hugging Face `Trainer` on the same model, data, batch and objective.

Each variant runs in a fresh process (its own peak memory), in interleaved rounds with alternating
order. Reports samples/s, tokens/s, an estimate of achieved FLOP/s (6 * parameters * tokens/s)
against the machine's measured fp32 matmul peak, and the ratios ours / Trainer.

    python benchmarks/loop_vs_trainer.py --rows 640 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved, write_results  # noqa: E402


def _data(rows: int, max_length: int):
    from unbackdoor.config import DataConfig
    from unbackdoor.data import load_data
    from unbackdoor.models import load_classifier
    from unbackdoor.batches import TokenizedSet
    from unbackdoor.training import set_seed

    set_seed(0)
    data = load_data(DataConfig(dataset="sst2", train_size=rows))
    model, tok, _ = load_classifier("minilm", 2, data.label_names, for_training=True)
    return model, tok, data.train, TokenizedSet(tok, data.train, max_length)


def run_ours(rows, batch, max_length, out):
    from unbackdoor.training import LoopConfig, train_loop
    from unbackdoor.objectives.ce import CrossEntropy

    model, tok, _, ds = _data(rows, max_length)
    t0 = time.perf_counter()
    train_loop(model, tok, CrossEntropy(), ds, LoopConfig(1, 2e-5, batch, checkpoint_every=0), out, progress=False)
    return time.perf_counter() - t0, ds, model


def run_trainer(rows, batch, max_length, out):
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    model, tok, _, ds = _data(rows, max_length)
    hf = datasets.Dataset.from_list([{**ds.features[i], "labels": ds.labels[i]} for i in range(len(ds))])
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1,
                             learning_rate=2e-5, max_grad_norm=1.0, lr_scheduler_type="linear", save_strategy="no",
                             report_to=[], logging_steps=10_000, dataloader_num_workers=0, use_cpu=True, seed=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=hf, data_collator=DataCollatorWithPadding(tok))
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0, ds, model


def child(variant, rows, batch, max_length):
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        seconds, ds, model = (run_ours if variant == "ours" else run_trainer)(rows, batch, max_length, out)
    tokens = sum(len(f["input_ids"]) for f in ds.features)
    # Embedding lookups do no matmul work: count the other parameters for the 6*N*tokens estimate.
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return {"variant": variant, "seconds": seconds, "samples_per_s": len(ds) / seconds, "tokens_per_s": tokens / seconds,
            "flops_per_s": 6 * params * tokens / seconds, "params": params,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul_peak(n=2048, reps=5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loop_vs_trainer"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.rows, a.batch, a.max_length)))
        return
    runs = interleaved(__file__, ["ours", "trainer"], a.rounds,
                       ["--rows", str(a.rows), "--batch", str(a.batch), "--max-length", str(a.max_length)])
    peak = matmul_peak()
    summary = {}
    for v in ("ours", "trainer"):
        rs = [x for x in runs if x["variant"] == v]
        summary[v] = {k: statistics.median(x[k] for x in rs) for k in ("samples_per_s", "tokens_per_s", "flops_per_s")}
        summary[v]["peak_rss_mb"] = max(x["peak_rss_mb"] for x in rs)
        summary[v]["flops_share_of_matmul_peak"] = summary[v]["flops_per_s"] / peak
    ratio = {"speed_ours_over_trainer": summary["ours"]["samples_per_s"] / summary["trainer"]["samples_per_s"],
             "memory_ours_over_trainer": summary["ours"]["peak_rss_mb"] / summary["trainer"]["peak_rss_mb"]}
    lines = ["| loop | samples/s | tokens/s | GFLOP/s (6·N·tokens/s) | share of matmul peak | peak RSS (MB) |",
             "|---|---|---|---|---|---|"]
    for v in ("ours", "trainer"):
        s = summary[v]
        lines.append(f"| {v} | {s['samples_per_s']:.1f} | {s['tokens_per_s']:.0f} | {s['flops_per_s'] / 1e9:.1f} | "
                     f"{s['flops_share_of_matmul_peak']:.2f} | {s['peak_rss_mb']:.0f} |")
    lines.append(f"\nspeed ours / Trainer = {ratio['speed_ours_over_trainer']:.3f}; memory ours / Trainer = "
                 f"{ratio['memory_ours_over_trainer']:.3f}; matmul peak {peak / 1e9:.1f} GFLOP/s")
    write_results(a.out, {"args": vars(a), "matmul_peak_flops": peak, "runs": runs, "summary": summary,
                          "ratio": ratio}, lines)


if __name__ == "__main__":
    main()
