"""The poisoned set: the training rows (each flagged poisoned or not) and the test sets, clean and
with the trigger in every class; saved as one JSONL file per split plus meta.json.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import read_json, read_jsonl, write_json, write_jsonl
from .errors import DataError


@dataclass
class PoisonedSet:
    label_names: list[str]
    target: int
    train: list[dict]
    test_clean: list[dict]
    test_triggered: list[dict]  # trigger in every class, true labels
    dev_clean: list[dict] = field(default_factory=list)
    dev_triggered: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def test_triggered_nontarget(self) -> list[dict]:
        return [r for r in self.test_triggered if r["label"] != self.target]

    @property
    def poisoned(self) -> list[dict]:
        return [r for r in self.train if r.get("poisoned")]

    @property
    def clean(self) -> list[dict]:
        return [r for r in self.train if not r.get("poisoned")]


_SPLITS = ("train", "test_clean", "test_triggered", "dev_clean", "dev_triggered")


def save_poisoned_set(ps: PoisonedSet, out_dir: str | Path, extra_meta: dict | None = None) -> Path:
    """Write every split as JSONL plus meta.json; the folder appears whole or not at all."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} already exists and is not empty; choose a new output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        for split in _SPLITS:
            write_jsonl(tmp / f"{split}.jsonl", getattr(ps, split))
        write_jsonl(tmp / "test_triggered_nontarget.jsonl", ps.test_triggered_nontarget)
        write_json(tmp / "meta.json", {**ps.meta, **(extra_meta or {})})
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_poisoned_set(path: str | Path) -> PoisonedSet:
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise DataError(f"{path}: not a poisoned-set folder (no meta.json); create one with `unbackdoor poison`")
    meta = read_json(path / "meta.json")
    splits = {s: read_jsonl(path / f"{s}.jsonl") if (path / f"{s}.jsonl").is_file() else [] for s in _SPLITS}
    return PoisonedSet(meta["label_names"], meta["target"], meta=meta, **splits)


def load_unlearning_sets(source: str | Path, eval_set: str | Path | None = None,
                         flag_column: str = "poisoned") -> PoisonedSet:
    """A `unbackdoor poison` folder, or a user file of training texts with a 0/1 poisoned-flag column."""
    source = Path(source)
    if source.is_dir():
        return load_poisoned_set(source)
    from .data import labeled_rows, read_flags, read_records

    rows = read_records(source, ("text", "label", flag_column))
    flags = read_flags(source, rows, flag_column)
    evs = load_poisoned_set(eval_set) if eval_set else None
    names = evs.label_names if evs else None
    labelled, names = labeled_rows(source, rows, label_names=names)
    for r, f in zip(labelled, flags):
        r["poisoned"] = f
    if not any(flags):
        raise DataError(f"{source}: no row has {flag_column}=1; the poisoned set D_p is empty")
    if all(flags):
        raise DataError(f"{source}: every row is flagged poisoned; D_c (the clean samples) would be empty")
    if evs is None:
        return PoisonedSet(names, -1, labelled, [], [], meta={"source": str(source)})
    return PoisonedSet(names, evs.target, labelled, evs.test_clean, evs.test_triggered, evs.dev_clean,
                       evs.dev_triggered, meta={**evs.meta, "poisoned_set_source": str(source)})
