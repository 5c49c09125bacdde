"""Where did unlearning move the weights? Word-embedding rows of the trigger's tokens against all
other rows, and each tensor's relative change, between the victim and an unlearned model.

usage: python movement.py CELL_DIR METHOD [METHOD ...]   (CELL_DIR holds victim/, poisoned/, METHOD/)
Adam normalises each coordinate's step: a row that only the trigger uses gets its gradient from
the lambda-scaled ascent alone, and Adam undoes the scaling. This measures whether that happens.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from unbackdoor.artifacts import read_jsonl


def main(cell: Path, methods: list[str]) -> None:
    meta = json.loads((cell / "poisoned" / "meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(cell / "victim" / "model")
    trig_ids = sorted({i for t in meta["attack"]["triggers"] for i in tok(t, add_special_tokens=False)["input_ids"]})
    rows = read_jsonl(cell / "poisoned" / "train.jsonl")
    clean_ids = set()
    for r in rows:
        if not r.get("poisoned"):
            clean_ids.update(tok(r["text"], add_special_tokens=False)["input_ids"])
    trig_only = [i for i in trig_ids if i not in clean_ids]
    victim = load_file(cell / "victim" / "model" / "model.safetensors")
    key = next(k for k in victim if k.endswith("word_embeddings.weight"))
    print(f"trigger tokens {tok.convert_ids_to_tokens(trig_ids)}; not in any clean training row: "
          f"{tok.convert_ids_to_tokens(trig_only)}")
    for m in methods:
        w = load_file(cell / m / "model" / "model.safetensors")
        d = (w[key] - victim[key]).norm(dim=1)
        in_clean = torch.tensor(sorted(clean_ids - set(trig_ids)))
        print(f"{m}: embedding-row change  trigger-only rows {d[trig_only].mean():.4f}  trigger rows {d[trig_ids].mean():.4f}  "
              f"rows in clean data {d[in_clean].mean():.4f}  (ratio trigger-only / clean {d[trig_only].mean() / d[in_clean].mean():.1f})")
        rel = sorted(((w[k] - victim[k]).norm() / victim[k].norm(), k) for k in victim if k in w and victim[k].dtype.is_floating_point)
        print("   largest relative tensor changes:", ", ".join(f"{k.split('.', 1)[-1]} {v:.3f}" for v, k in rel[-4:][::-1]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
