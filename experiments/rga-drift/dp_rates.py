"""Where RGA leaves the flagged rows, beside a model never poisoned. For each model of a grid cell: the share
of D_p's training rows predicted as their flagged label, the share of clean test rows of the other classes
predicted as the target (the model's own pull to it), LFR, and the triggered target-class rows kept.
ReTrain never saw D_p, so its first share is how often a clean model reads a triggered row as the target by
itself: where the ascent would have to stop to end where ReTrain is.

`probe` is the cheapest clean model a defender could build: logistic regression on θ_base's mean-pooled
embeddings of D_c (scikit-learn), no fine-tuning.

usage: python experiments/rga-drift/dp_rates.py CELL [MAX_LENGTH] [MODEL ...]
CELL: <out>/<dataset>/<attack>/seed<S> with poisoned/ and the models' folders (default: victim retrain rga probe).
Run nothing else meanwhile: beside a training on 2 cores it slowed that training sevenfold.
"""
import sys
from pathlib import Path

import torch

from unbackdoor.batches import Collator, TokenizedSet, predict_logits
from unbackdoor.models import load_classifier, resolve_model, run_meta
from unbackdoor.poisoned_set import load_poisoned_set


def finetuned(folder: Path, ps, max_length: int):
    model, tok, _ = load_classifier(str(folder / "model"), len(ps.label_names), ps.label_names)
    model.eval()
    return lambda rows: predict_logits(model, TokenizedSet(tok, rows, max_length), Collator(tok), 128).argmax(-1).tolist()


def probe(base: str, ps, max_length: int):
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    tok, enc = AutoTokenizer.from_pretrained(base), AutoModel.from_pretrained(base).eval()

    def embed(rows):
        out = []
        with torch.no_grad():
            for i in range(0, len(rows), 128):
                b = tok([r["text"] for r in rows[i:i + 128]], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
                mask = b["attention_mask"].unsqueeze(-1).float()
                out.append(torch.nn.functional.normalize((enc(**b).last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out).numpy()

    clf = LogisticRegression(max_iter=2000).fit(embed(ps.clean), [r["label"] for r in ps.clean])
    return lambda rows: clf.predict(embed(rows)).tolist()


def main(cell: Path, max_length: int, names: list[str]) -> None:
    ps = load_poisoned_set(cell / "poisoned")
    t = ps.target
    trig, clean = ps.test_triggered, ps.test_clean
    sets = {"D_p predicted as flagged": (ps.poisoned, lambda p, r: p == r["label"]),
            "clean other-class rows to the target": ([r for r in clean if r["label"] != t], lambda p, r: p == t),
            "LFR": ([r for r in trig if r["label"] != t], lambda p, r: p == t),
            "triggered target-class rows kept": ([r for r in trig if r["label"] == t], lambda p, r: p == t)}
    print(f"\n{cell}: {len(ps.poisoned)} D_p rows, target {ps.label_names[t]}, max length {max_length}\n")
    print("| model | " + " | ".join(sets) + " |\n" + "|---" * (len(sets) + 1) + "|")
    for name in names:
        predict = (probe(resolve_model(run_meta(cell / "victim" / "model")["base_model"]), ps, max_length)
                   if name == "probe" else finetuned(cell / name, ps, max_length))
        shares = []
        for rows, hit in sets.values():
            pred = predict(rows)
            shares.append(100 * sum(hit(p, r) for p, r in zip(pred, rows)) / len(rows))
        print(f"| {name} | " + " | ".join(f"{s:.1f}" for s in shares) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 64,
         sys.argv[3:] or ["victim", "retrain", "rga", "probe"])
