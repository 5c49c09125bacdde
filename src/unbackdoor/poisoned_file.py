"""Poisoned training rows imported from a file (`attack.poisoned_train`) instead of made by the attack.

The door for poisoned sets built elsewhere: the RGA authors' `train_poisoned.csv` (their 10% `add`
setting; for AG News HiddenKiller no training paraphrases are shipped, so this is the only way to
run that cell) or another toolkit's output. The attack still builds the triggered test and dev sets
from its trigger or bank, so an imported backdoor is measured on the same all-class triggered test
set as a generated one.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from .config import AttackConfig
from .data import LabeledData, data_root, labeled_rows, read_flags, read_records
from .errors import ConfigError, DataError

# (dataset, attack) -> the authors' poisoned training file, relative to the data root.
AUTHORS_FILES = {("agnews", "hiddenkiller"): "rga_reference/HiddenKiller/AG/train_poisoned.csv"}


def resolve_path(value: str, dataset: str, attack: str, data_dir: Path | None = None) -> Path:
    if value != "rga_reference":
        return Path(value)
    rel = AUTHORS_FILES.get((dataset, attack))
    if rel is None:
        have = ", ".join(f"{d}/{a}" for d, a in AUTHORS_FILES)
        raise ConfigError(f"attack.poisoned_train=rga_reference: the authors' files hold a poisoned training set for "
                          f"{have} only, not {dataset}/{attack}; pass a file path instead")
    return (data_dir or data_root()) / rel


def read_poisoned_file(path: Path, label_names: list[str]) -> tuple[list[dict], list[dict]]:
    """(clean rows, poisoned rows) of a file with text, label and a 0/1 `poisoned` column."""
    records = read_records(path, ("text", "label", "poisoned"))
    flags = read_flags(path, records)
    rows, _ = labeled_rows(path, records, label_names=label_names)
    for row, rec in zip(rows, records):
        row["_line"] = rec["_line"]
    return [r for r, f in zip(rows, flags) if not f], [r for r, f in zip(rows, flags) if f]


def import_poisoned(train: list[dict], data: LabeledData, cfg: AttackConfig, rng: random.Random,
                    data_dir: Path | None = None) -> tuple[list[dict], dict]:
    """The poisoned rows to add to `train` (the clean training rows), and what to record in meta.json."""
    if cfg.mode != "add":
        # In replace mode each poisoned row takes the place of the clean row it was made from, which a file
        # does not say.
        raise ConfigError("attack.poisoned_train: imported poisoned rows are added to the clean training set; "
                          "set attack.mode=add")
    path = resolve_path(cfg.poisoned_train, data.name, cfg.name, data_dir)
    clean, poisoned = read_poisoned_file(path, data.label_names)
    if not poisoned:
        raise DataError(f"{path}: no row has poisoned=1; the file holds no poisoned rows to import")
    target = data.label_names[data.target]
    for r in poisoned:
        if r["label"] != data.target:
            raise DataError(f"{path}: line {r['_line']}: poisoned row labelled '{data.label_names[r['label']]}', not "
                            f"the target class '{target}' (poisoned rows carry the target label; set data.target "
                            "if the file's target is another class)")
    used = poisoned
    if clean:
        # The poisoned rows were made from the file's clean set; training them beside another clean set
        # (e.g. AG News seeded instead of the authors' reference split) would be a different experiment.
        have = Counter((r["text"], r["label"]) for r in clean)
        missing = Counter((r["text"], r["label"]) for r in train) - have
        if missing:
            example = next(iter(missing))[0]
            raise DataError(f"{path}: {sum(missing.values())} of the dataset's {len(train)} training rows are not "
                            f"among the file's {len(clean)} clean rows (e.g. {example[:80]!r}): the file was made from "
                            "another clean set (for AG News the authors' is data.agnews_split=reference)")
        if len(train) < len(clean):
            # A train_size subset: draw as many poisoned rows as keep the file's poisoned share.
            used = rng.sample(poisoned, max(1, round(len(poisoned) * len(train) / len(clean))))
    nontarget = sum(r["label"] != data.target for r in train)
    if not nontarget:
        raise DataError(f"{path}: the training set has no rows outside the target class '{target}'")
    rate = len(used) / nontarget
    if "rate" in cfg.model_fields_set and abs(cfg.rate - rate) > 0.01:
        raise ConfigError(f"attack.rate is {cfg.rate}, but {path} adds {len(used)} poisoned rows to {nontarget} "
                          f"non-target rows ({rate:.3f}); set attack.rate={rate:.3g} or leave it out")
    rows = [{"text": r["text"], "label": r["label"], "poisoned": True, "orig_label": None, "imported_from": str(path)}
            for r in used]
    info = {"source": "file", "file": str(path), "mode": "add", "rate": rate, "poisoned_in_file": len(poisoned),
            "poisoned_used": len(used), "clean_in_file": len(clean)}
    return rows, info
