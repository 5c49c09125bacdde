"""Scaling: time per training epoch (our loop, cross-entropy, MiniLM) as the training set grows and
as max length grows. Each (rows, max length) point runs in its own fresh process, interleaved.
Cost should grow linearly with rows; with max length it grows only as far as sentences are longer
than the cut (dynamic padding pads a batch to its longest row, not to max length).

    python benchmarks/scaling.py --rows 1000,2000,4000,6920 --lengths 64,128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved, write_results  # noqa: E402


def child(point: str, batch: int) -> dict:
    import tempfile

    from loop_vs_trainer import run_ours

    rows, length = map(int, point.split("x"))
    with tempfile.TemporaryDirectory() as out:
        seconds, ds, _ = run_ours(rows if rows < 6920 else None, batch, length, out)  # None: the whole set
    return {"variant": point, "rows": len(ds), "max_length": length, "seconds": seconds,
            "tokens": sum(len(f["input_ids"]) for f in ds.features)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000,2000,4000,6920")
    ap.add_argument("--lengths", default="64,128")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.batch)))
        return
    points = [f"{r}x{n}" for n in a.lengths.split(",") for r in a.rows.split(",")]
    runs = interleaved(__file__, points, a.rounds, ["--batch", str(a.batch)])
    lines = ["| rows | max length | tokens (after dynamic padding cut) | s / epoch | ms / row | µs / token |",
             "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda x: (x["max_length"], x["rows"])):
        lines.append(f"| {r['rows']} | {r['max_length']} | {r['tokens']} | {r['seconds']:.1f} | "
                     f"{1000 * r['seconds'] / r['rows']:.1f} | {1e6 * r['seconds'] / r['tokens']:.0f} |")
    write_results(a.out, {"args": vars(a), "runs": runs}, lines)


if __name__ == "__main__":
    main()
