"""Datasets: the paper's three by name, any TSV/CSV/JSONL file, or a Hugging Face dataset.

A sample is a plain dict: {"text": str, "label": int} plus, after poisoning, "poisoned",
"orig_label" and "source". Splits are lists of such dicts, so they round-trip through JSONL.
"""

from __future__ import annotations

import csv
import json
import numbers
import os
import sys
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:  # config composes the attack config from the attacks, which read data files
    from .config import DataConfig


@dataclass(frozen=True)
class NamedDataset:
    label_names: tuple[str, ...]
    target: int  # the paper's target class


NAMED = {
    "sst2": NamedDataset(("negative", "positive"), 1),
    "hsol": NamedDataset(("non-hate", "hate"), 0),
    "agnews": NamedDataset(("World", "Sports", "Business", "Sci/Tech"), 0),
}


@dataclass
class LabeledData:
    name: str
    label_names: list[str]
    target: int
    train: list[dict]
    test: list[dict]
    dev: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def data_root(cfg: DataConfig | None = None) -> Path:
    if cfg is not None and cfg.data_root:
        root = Path(cfg.data_root)
        if not root.is_dir():
            raise DataError(f"data_root {root} is not a directory")
        return root
    if os.environ.get("UNBACKDOOR_DATA"):
        root = Path(os.environ["UNBACKDOOR_DATA"])
        if not root.is_dir():
            raise DataError(f"UNBACKDOOR_DATA={root} is not a directory")
        return root
    repo = Path(__file__).resolve().parents[2]
    for cand in (Path.cwd() / ".." / "shared" / "datasets", repo.parent / "shared" / "datasets"):
        if cand.is_dir():
            return cand.resolve()
    raise DataError("no dataset folder found: set data.data_root or UNBACKDOOR_DATA to a folder holding "
                    "sst2/, hsol/ and agnews/ (e.g. ../shared/datasets)")


# ---------------------------------------------------------------- file reading

def _decode(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not raw.strip():
        raise DataError(f"{path}: file is empty (expected a header line and data rows)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "re-save the file as UTF-8") from None


def read_records(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a TSV/CSV (header line) or JSONL file as dicts, each with a `_line` number."""
    path = Path(path)
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i}: not a JSON object ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
            missing = [c for c in required if c not in obj]
            if missing:
                raise DataError(f"{path}: line {i}: missing field(s) {missing}; found {sorted(obj)}")
            obj["_line"] = i
            rows.append(obj)
        return rows
    if suffix not in (".tsv", ".csv", ".txt"):
        raise DataError(f"{path}: unknown file type '{suffix}'; expected .tsv, .csv or .jsonl")
    delimiter = "\t" if suffix in (".tsv", ".txt") else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: file is empty") from None
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: header repeats column(s) {dupes}; column names must be unique")
    missing = [c for c in required if c not in header]
    if missing:
        other = "," if delimiter == "\t" else "\t"
        hint = (f" (the header looks {'comma' if other == ',' else 'tab'}-separated: wrong delimiter for a "
                f"{suffix} file?)" if len(header) == 1 and other in header[0] else "")
        raise DataError(f"{path}: missing column(s) {missing}; found columns {header}{hint}")
    rows = []
    for line_no, fields in enumerate(reader, 2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}: line {line_no}: expected {len(header)} fields ({header}), found {len(fields)}")
        row = dict(zip(header, fields))
        row["_line"] = line_no
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    return rows


def _as_int(v) -> int | None:
    # numbers.*, not int/float: labels from pandas or datasets arrive as numpy scalars.
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


def resolve_labels(raw: list, label_names: list[str] | None, where: list[str]) -> tuple[list[int], list[str]]:
    """Map raw labels (indices or names) to indices; returns (labels, label_names)."""
    ints = [_as_int(v) for v in raw]
    if label_names is None:
        if all(i is not None for i in ints):
            k = max(ints) + 1
            if min(ints) < 0:
                bad = ints.index(min(ints))
                raise DataError(f"{where[bad]}: label {raw[bad]!r} is negative; expected indices 0..K-1")
            label_names = [str(i) for i in range(k)]
        elif all(i is None for i in ints):
            label_names = sorted({str(v) for v in raw})
        else:
            bad = next(j for j, i in enumerate(ints) if (i is None) != (ints[0] is None))
            raise DataError(f"{where[bad]}: label {raw[bad]!r} mixes types with earlier labels (e.g. {raw[0]!r}); "
                            "use either class indices or class names throughout")
    index = {n: i for i, n in enumerate(label_names)}
    out = []
    for j, (v, i) in enumerate(zip(raw, ints)):
        if i is not None and 0 <= i < len(label_names):
            out.append(i)
        elif str(v) in index:
            out.append(index[str(v)])
        else:
            raise DataError(f"{where[j]}: label {v!r} is not in the label set {label_names} "
                            f"(or an index 0..{len(label_names) - 1})")
    return out, list(label_names)


def read_labeled_file(path: str | Path, text_column: str = "text", label_column: str = "label",
                      label_names: list[str] | None = None) -> tuple[list[dict], list[str]]:
    return labeled_rows(path, read_records(path, (text_column, label_column)), text_column, label_column, label_names)


def labeled_rows(path: str | Path, records: list[dict], text_column: str = "text", label_column: str = "label",
                 label_names: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """{"text", "label"} rows (text stripped, label an index) of records read by `read_records`."""
    where = [f"{path}: line {r['_line']}" for r in records]
    for r, w in zip(records, where):
        t = r[text_column]
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{w}: empty text in column '{text_column}'")
    labels, names = resolve_labels([r[label_column] for r in records], label_names, where)
    return [{"text": r[text_column].strip(), "label": y} for r, y in zip(records, labels)], names


def read_flags(path: str | Path, records: list[dict], column: str = "poisoned") -> list[bool]:
    """A 0/1 (or true/false) column of records read by `read_records`, e.g. which rows are poisoned."""
    flags = []
    for r in records:
        v = str(r[column]).strip().lower()
        if v not in ("0", "1", "true", "false"):
            raise DataError(f"{path}: line {r['_line']}: column '{column}' must be 0/1 or true/false, got {v!r}")
        flags.append(v in ("1", "true"))
    return flags


# ---------------------------------------------------------------- data in memory

def _columns(obj, field: str, text_column: str, label_column: str) -> tuple[list, list]:
    found = list(obj.column_names if hasattr(obj, "column_names") else obj.columns)
    missing = [c for c in (text_column, label_column) if c not in found]
    if missing:
        raise DataError(f"{field}: missing column(s) {missing}; found columns {found} (set text_column= / "
                        "label_column=)")
    return list(obj[text_column]), list(obj[label_column])


def _pairs(items, field: str, text_column: str, label_column: str) -> tuple[list, list]:
    texts, labels = [], []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            missing = [c for c in (text_column, label_column) if c not in item]
            if missing:
                raise DataError(f"{field}: row {i}: missing key(s) {missing}; found {sorted(item)}")
            item = (item[text_column], item[label_column])
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"{field}: row {i}: expected a (text, label) pair or a dict, got {item!r:.80}")
        texts.append(item[0])
        labels.append(item[1])
    return texts, labels


def rows_from(obj, field: str = "data", text_column: str = "text", label_column: str = "label",
              label_names: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """(rows, label_names) of a datasets.Dataset, a pandas DataFrame, or a list of (text, label) pairs or
    {text, label} dicts; labels are class indices or names. `field` names the argument in errors."""
    # Checked by module, not imported: neither library is needed unless the caller already uses it.
    hf, pd = sys.modules.get("datasets"), sys.modules.get("pandas")
    if hf is not None and isinstance(obj, hf.Dataset):
        texts, raw = _columns(obj, field, text_column, label_column)
        feature = obj.features.get(label_column)
        label_names = label_names or (list(feature.names) if hasattr(feature, "names") else None)
    elif pd is not None and isinstance(obj, pd.DataFrame):
        texts, raw = _columns(obj, field, text_column, label_column)
    elif isinstance(obj, (list, tuple)):
        texts, raw = _pairs(obj, field, text_column, label_column)
    else:
        raise DataError(f"{field}: expected a datasets.Dataset, a pandas DataFrame or a list of (text, label) pairs, "
                        f"got {type(obj).__name__}")
    if not texts:
        raise DataError(f"{field}: no rows")
    where = [f"{field}: row {i}" for i in range(len(texts))]
    for t, w in zip(texts, where):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{w}: empty or non-text value {t!r:.40} as the text")
    labels, names = resolve_labels(raw, label_names, where)
    return [{"text": t.strip(), "label": y} for t, y in zip(texts, labels)], names


# ---------------------------------------------------------------- sampling

def stratified_sample(rows: list[dict], n: int | None = None, per_class: int | None = None,
                      seed: int = 0) -> list[dict]:
    """Class-balanced (per_class) or class-proportional (n) random subset, in a seeded order."""
    rng = random.Random(seed)
    by_class: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["label"]].append(r)
    out = []
    for c in sorted(by_class):
        group = by_class[c]
        k = per_class if per_class is not None else round(len(group) * n / len(rows))
        if k > len(group):
            raise DataError(f"class {c} has {len(group)} samples, fewer than the {k} requested")
        out.extend(rng.sample(group, k))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- loading

def target_index(target, label_names: list[str], default: int | None, source: str) -> int:
    if target is None:
        if default is None:
            raise DataError(f"{source}: set data.target (a class name or index from {label_names})")
        return default
    i = _as_int(target)
    if i is not None and 0 <= i < len(label_names):
        return i
    if str(target) in label_names:
        return label_names.index(str(target))
    raise DataError(f"target class {target!r} is not in the dataset's classes {label_names}")


def _load_named(cfg: DataConfig, seed: int) -> LabeledData:
    info = NAMED[cfg.dataset]
    root = data_root(cfg)
    names = list(info.label_names)

    def split(name):
        rows, _ = read_labeled_file(root / cfg.dataset / f"{name}.tsv", label_names=names)
        return rows

    notes = []
    if cfg.dataset == "agnews":
        if cfg.agnews_split == "reference":
            ref = root / "rga_reference"
            train, _ = read_labeled_file(ref / "HiddenKiller" / "AG" / "train_clean.csv", label_names=names)
            test, _ = read_labeled_file(ref / "BadNet" / "AG" / "test_clean.csv", label_names=names)
            notes.append("AG News: the RGA authors' 8,000-row train / 1,000-row test subsets")
        else:
            train = stratified_sample(split("train"), per_class=2000, seed=seed)
            test = stratified_sample(split("test"), per_class=250, seed=seed)
            notes.append(f"AG News: 2,000/250 per class sampled with seed {seed}")
        dev = stratified_sample(split("dev"), per_class=250, seed=seed)
    else:
        train, test, dev = split("train"), split("test"), split("dev")
        if cfg.dataset == "hsol":
            notes.append("HSOL has no separate dev set: its dev file equals its test file")
    return LabeledData(cfg.dataset, names, target_index(cfg.target, names, info.target, cfg.dataset),
                       train, test, dev, notes)


def _load_hf(cfg: DataConfig, seed: int) -> LabeledData:
    name = cfg.dataset[3:]
    try:
        import datasets as hfds

        ds = hfds.load_dataset(name)
    except Exception as e:  # noqa: BLE001 - the hub raises many types; all mean "could not load"
        raise DataError(f"could not load Hugging Face dataset '{name}' ({type(e).__name__}: {e}). This needs "
                        "internet access to the hub; offline, pass a local TSV/CSV/JSONL file instead") from None
    feat = ds["train"].features.get(cfg.label_column)
    names = cfg.label_names or (list(feat.names) if hasattr(feat, "names") else None)

    def rows(split):
        recs = ds[split]
        where = [f"{name}[{split}] row {i}" for i in range(len(recs))]
        labels, _ = resolve_labels(recs[cfg.label_column], names, where)
        return [{"text": t, "label": y} for t, y in zip(recs[cfg.text_column], labels)]

    train = rows("train")
    names = names or [str(i) for i in range(max(r["label"] for r in train) + 1)]
    test = rows("test") if "test" in ds else rows("validation")
    dev = rows("validation") if "validation" in ds and "test" in ds else []
    return LabeledData(name, names, target_index(cfg.target, names, None, name), train, test, dev)


def _load_files(cfg: DataConfig, seed: int) -> LabeledData:
    train, names = read_labeled_file(cfg.dataset, cfg.text_column, cfg.label_column, cfg.label_names)
    if not cfg.test_file:
        raise DataError(f"{cfg.dataset}: a user dataset needs data.test_file as well")
    test, _ = read_labeled_file(cfg.test_file, cfg.text_column, cfg.label_column, names)
    dev = read_labeled_file(cfg.dev_file, cfg.text_column, cfg.label_column, names)[0] if cfg.dev_file else []
    if len(names) < 2:
        raise DataError(f"{cfg.dataset}: found a single class {names}; a classifier needs at least two")
    return LabeledData(Path(cfg.dataset).stem, names, target_index(cfg.target, names, None, cfg.dataset),
                       train, test, dev)


def load_data(cfg: DataConfig, seed: int = 42) -> LabeledData:
    if cfg.dataset in NAMED:
        data = _load_named(cfg, seed)
    elif cfg.dataset.startswith("hf:"):
        data = _load_hf(cfg, seed)
    elif Path(cfg.dataset).suffix or os.sep in cfg.dataset:
        data = _load_files(cfg, seed)
    else:
        raise DataError(f"unknown dataset '{cfg.dataset}': expected one of {sorted(NAMED)}, a .tsv/.csv/.jsonl "
                        "file, or hf:<name>")
    return subsample(data, cfg, seed)


def subsample(data: LabeledData, cfg: DataConfig, seed: int) -> LabeledData:
    """cfg.train_size / cfg.test_size rows, class-stratified, when the data has more."""
    if cfg.train_size and cfg.train_size < len(data.train):
        data.train = stratified_sample(data.train, n=cfg.train_size, seed=seed)
        data.notes.append(f"training subset: {len(data.train)} rows (seed {seed})")
    if cfg.test_size and cfg.test_size < len(data.test):
        data.test = stratified_sample(data.test, n=cfg.test_size, seed=seed)
        data.notes.append(f"test subset: {len(data.test)} rows (seed {seed})")
    return data
