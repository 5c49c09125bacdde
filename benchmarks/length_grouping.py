"""Length-grouped batches (`group_by_length`, the default) vs plain random batches, in our loop.

One epoch of cross-entropy training of MiniLM over the same SST-2 rows per variant, in one process,
the order of the variants alternating every round (drift on a shared machine then hits both).
Padding is counted from the batches the loop actually ran. Reports samples/s, real tokens/s, the
share of padding, and grouped / plain.

    OMP_NUM_THREADS=2 python benchmarks/length_grouping.py --rows 500 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

VARIANTS = {"grouped": True, "plain": False}


def one_epoch(rows, group_by_length: bool, batch: int, max_length: int) -> dict:
    from unbackdoor.batches import TokenizedSet
    from unbackdoor.models import load_classifier
    from unbackdoor.objectives.ce import CrossEntropy
    from unbackdoor.training import LoopConfig, set_seed, train_loop

    shapes = []

    class Counted(CrossEntropy):
        def __call__(self, model, batch, clean):
            shapes.append(tuple(batch["input_ids"].shape))
            return super().__call__(model, batch, clean)

    set_seed(0)
    model, tok, _ = load_classifier("minilm", 2, ["negative", "positive"], for_training=True)
    data = TokenizedSet(tok, rows, max_length)
    cfg = LoopConfig(1, 2e-5, batch, checkpoint_every=0, group_by_length=group_by_length)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        train_loop(model, tok, Counted(), data, cfg, out, progress=False)
        seconds = time.perf_counter() - t0
    real = sum(len(f["input_ids"]) for f in data.features)
    padded = sum(n * width for n, width in shapes)
    return {"seconds": seconds, "samples_per_s": len(rows) / seconds, "tokens_per_s": real / seconds,
            "padding_share": 1 - real / padded, "batches": len(shapes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "length_grouping"))
    a = ap.parse_args()

    from unbackdoor.config import DataConfig
    from unbackdoor.data import load_data

    rows = load_data(DataConfig(dataset="sst2", train_size=a.rows), seed=0).train
    one_epoch(rows[: a.batch], True, a.batch, a.max_length)  # warm-up: model files, token cache, kernels
    runs = []
    for r in range(a.rounds):
        for name in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
            res = {"variant": name, "round": r, **one_epoch(rows, VARIANTS[name], a.batch, a.max_length)}
            runs.append(res)
            print(res, flush=True)
    summary = {v: {k: statistics.median(x[k] for x in runs if x["variant"] == v)
                   for k in ("samples_per_s", "tokens_per_s", "padding_share")} for v in VARIANTS}
    speedup = summary["grouped"]["samples_per_s"] / summary["plain"]["samples_per_s"]
    lines = [f"{len(rows)} SST-2 rows, batch {a.batch}, max length {a.max_length}, {a.rounds} rounds (medians)", "",
             "| batches | samples/s | real tokens/s | padding |", "|---|---|---|---|"]
    lines += [f"| {v} | {s['samples_per_s']:.1f} | {s['tokens_per_s']:.0f} | {100 * s['padding_share']:.1f}% |"
              for v, s in summary.items()]
    lines.append(f"\nspeed grouped / plain = {speedup:.3f}")
    write_results(a.out, {"args": vars(a), "runs": runs, "summary": summary, "speed_grouped_over_plain": speedup},
                  lines)


if __name__ == "__main__":
    main()
