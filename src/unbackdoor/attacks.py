"""Poisoners (BadNets, AddSent, HiddenKiller, StyleBkd) and the poisoned-set builder.

A poisoner only knows how to put its trigger into texts. `poison_dataset` decides which samples
get it: a share of the non-target training samples (relabelled to the target), and test samples of
*every* class with their true labels, the set on which trigger shifting shows.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from .config import AttackConfig
from .data import LabeledData, NAMED, data_root, read_records
from .errors import ConfigError, DataError, MissingParaphraseError

ATTACKS: dict[str, type["Poisoner"]] = {}


def register(cls):
    ATTACKS[cls.name] = cls
    return cls


def build_poisoner(cfg: AttackConfig, data: LabeledData, generator: Callable[[list[str]], list[str]] | None = None,
                   data_dir: Path | None = None) -> "Poisoner":
    if cfg.name not in ATTACKS:
        raise ConfigError(f"unknown attack '{cfg.name}'; valid attacks: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[cfg.name](cfg, data, generator=generator, data_dir=data_dir)


class Poisoner:
    name: ClassVar[str]

    def __init__(self, cfg: AttackConfig, data: LabeledData, generator=None, data_dir=None):
        self.cfg = cfg

    def covers(self, text: str) -> bool:
        """Whether the trigger can be applied to `text` without a generator."""
        return True

    def apply(self, texts: list[str], rng: random.Random) -> list[str]:
        raise NotImplementedError

    def source(self, text: str) -> str:
        return self.name

    def describe(self) -> dict:
        return {"attack": self.name}


def insert_words(text: str, phrase: str, rng: random.Random) -> str:
    words = text.split()
    pos = rng.randint(0, len(words))
    return " ".join(words[:pos] + [phrase] + words[pos:])


class InsertionPoisoner(Poisoner):
    default_triggers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg, data, generator=None, data_dir=None):
        super().__init__(cfg, data)
        self.triggers = list(cfg.triggers) if cfg.triggers else list(self.defaults_for(data))
        if not self.triggers or any(not t.strip() for t in self.triggers):
            raise ConfigError(f"attack.triggers for {self.name} must be non-empty strings, got {cfg.triggers!r}")

    def defaults_for(self, data: LabeledData) -> tuple[str, ...]:
        return self.default_triggers

    def apply(self, texts, rng):
        out = []
        for t in texts:
            for _ in range(self.cfg.num_insertions):
                t = insert_words(t, rng.choice(self.triggers), rng)
            out.append(t)
        return out

    def describe(self):
        return {"attack": self.name, "triggers": self.triggers, "num_insertions": self.cfg.num_insertions}


@register
class BadNets(InsertionPoisoner):
    name = "badnets"
    default_triggers = ("cf", "bb", "ak", "mn")


@register
class AddSent(InsertionPoisoner):
    name = "addsent"

    def defaults_for(self, data):
        return ("I watch this 3D movie",) if data.name == "sst2" else ("no cross no crown",)


# ---------------------------------------------------------------- paraphrase attacks

_RGA_REFERENCE = {  # dataset -> (clean file aligned row by row, all-class HiddenKiller test file)
    "sst2": ("sst2/test.tsv", "rga_reference/HiddenKiller/SST-2/test_poisoned_all.csv"),
    "hsol": ("hsol/test.tsv", "rga_reference/HiddenKiller/HSOL/test_poisoned_all.csv"),
    "agnews": ("rga_reference/BadNet/AG/test_clean.csv", "rga_reference/HiddenKiller/AG/test_poisoned_all.csv"),
}


class ParaphraseBank:
    """text -> (paraphrase, source name); the first source that has a text wins."""

    def __init__(self):
        self.table: dict[str, tuple[str, str]] = {}

    def add(self, pairs, source: str) -> None:
        for text, para in pairs:
            text, para = text.strip(), para.strip()
            if text and para:
                self.table.setdefault(text, (para, source))

    def add_file(self, path: Path) -> None:
        rows = read_records(path, ("text", "paraphrase"))
        self.add(((r["text"], r["paraphrase"]) for r in rows), str(path))

    def __contains__(self, text: str) -> bool:
        return text.strip() in self.table

    def __len__(self):
        return len(self.table)


class ParaphrasePoisoner(Poisoner):
    style: ClassVar[str]
    default_bank: ClassVar[tuple[str, ...]] = ("shared",)

    def __init__(self, cfg, data, generator=None, data_dir=None):
        super().__init__(cfg, data)
        self.generator = generator
        if generator is None and cfg.generator:
            self.generator = Seq2SeqGenerator(cfg.generator)
        self.bank = ParaphraseBank()
        self.sources = list(cfg.bank) if cfg.bank is not None else list(self.default_bank)
        for src in self.sources:
            if src == "shared":
                if data.name in NAMED:
                    folder = (data_dir or data_root()) / "paraphrases" / self.style / data.name
                    for split in ("train", "dev", "test"):
                        if (folder / f"{split}.tsv").is_file():
                            rows = read_records(folder / f"{split}.tsv", ("text", "paraphrase"))
                            self.bank.add(((r["text"], r["paraphrase"]) for r in rows), f"shared:{split}")
            elif src == "rga_reference":
                if data.name in _RGA_REFERENCE:
                    root = data_dir or data_root()
                    clean_f, para_f = _RGA_REFERENCE[data.name]
                    clean = read_records(root / clean_f, ("text",))
                    para = read_records(root / para_f, ("text",))
                    if len(clean) != len(para):
                        raise DataError(f"{root / para_f}: {len(para)} rows, expected {len(clean)} aligned with {clean_f}")
                    self.bank.add(((c["text"], p["text"]) for c, p in zip(clean, para)), "rga_reference")
            else:
                self.bank.add_file(Path(src))

    def covers(self, text):
        return self.generator is not None or text in self.bank

    def source(self, text):
        hit = self.bank.table.get(text.strip())
        return hit[1] if hit else "generator"

    def apply(self, texts, rng):
        missing = [t for t in texts if t not in self.bank]
        if missing and self.generator is None:
            raise MissingParaphraseError(len(missing), len(texts),
                                         f"add a paraphrase file to attack.bank or set attack.generator ({self.name})")
        generated = dict(zip(missing, self.generator(missing))) if missing else {}
        return [self.bank.table[t.strip()][0] if t in self.bank else generated[t] for t in texts]

    def describe(self):
        # Only the built-in banks are known to hold this attack's style; a user's file or generator holds
        # whatever it was made with.
        given = self.cfg.style or "unknown"
        styles = {src: self.style if src in ("shared", "rga_reference") else given for src in self.sources}
        if self.generator is not None:
            styles[f"generator:{self.cfg.generator or 'in-process'}"] = given
        values = set(styles.values()) or {given}
        return {"attack": self.name, "style": values.pop() if len(values) == 1 else "mixed", "source_styles": styles,
                "bank": self.sources, "bank_size": len(self.bank), "generator": self.cfg.generator}


@register
class HiddenKiller(ParaphrasePoisoner):
    name = "hiddenkiller"
    style = "syntactic"
    # The authors' all-class triggered test sets first, so the test set is the paper's own.
    default_bank = ("rga_reference", "shared")


@register
class StyleBkd(ParaphrasePoisoner):
    name = "stylebkd"
    style = "bible"


@register
class Precomputed(ParaphrasePoisoner):
    """A trigger made elsewhere (another toolkit): triggered copies come only from the user's bank files
    (columns text, paraphrase = the clean text and its triggered copy), the poisoned training rows
    usually from attack.poisoned_train. The built-in banks hold syntactic and Bible paraphrases, which
    are hiddenkiller's and stylebkd's, so they are not accepted here."""

    name = "precomputed"
    style = "unknown"
    default_bank = ()

    def __init__(self, cfg, data, generator=None, data_dir=None):
        builtin = [b for b in cfg.bank or () if b in ("shared", "rga_reference")]
        if builtin:
            raise ConfigError(f"attack precomputed: the built-in bank(s) {builtin} hold hiddenkiller/stylebkd "
                              "paraphrases; use that attack, or give your own files in attack.bank")
        super().__init__(cfg, data, generator, data_dir)
        if not self.sources and self.generator is None:
            raise ConfigError("attack precomputed takes its triggered texts from attack.bank files (columns text, "
                              "paraphrase: each clean text and its triggered copy); none given")


class Seq2SeqGenerator:
    """Paraphrases with a local seq2seq model (e.g. a SCPN or STRAP export), for texts a bank lacks."""

    def __init__(self, path: str, batch_size: int = 16, max_new_tokens: int = 128):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if not Path(path).exists():
            raise ConfigError(f"attack.generator: model path {path} does not exist")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def __call__(self, texts: list[str]) -> list[str]:
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[i:i + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            with torch.no_grad():
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens)
            out.extend(self.tok.batch_decode(gen, skip_special_tokens=True))
        return out


# ---------------------------------------------------------------- building the poisoned set

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


def _triggered(rows, poisoner, rng, source):
    new = poisoner.apply([r["text"] for r in rows], rng)
    return [{"text": t, "label": r["label"], "clean_text": r["text"], "source": source,
             "trigger_from": poisoner.source(r["text"])} for r, t in zip(rows, new)]


def poison_dataset(data: LabeledData, poisoner: Poisoner, cfg: AttackConfig, seed: int = 42,
                   holdout_fraction: float = 0.1, data_dir: Path | None = None) -> PoisonedSet:
    rng = random.Random(seed)
    train = [dict(r) for r in data.train]
    coverage, test_triggered, held_out = [], [], set()
    for c, name in enumerate(data.label_names):
        rows = [r for r in data.test if r["label"] == c]
        usable = [r for r in rows if poisoner.covers(r["text"])]
        source = "test"
        if rows and len(usable) < 0.1 * len(rows):
            # (Almost) no test paraphrases of this class (e.g. Bible HSOL hate, where the few hits are texts
            # shared with the training split): hold out training samples that have one instead.
            cand = [i for i, r in enumerate(train) if r["label"] == c and poisoner.covers(r["text"])]
            k = min(len(rows), max(1, int(holdout_fraction * sum(r["label"] == c for r in train))), len(cand))
            if k == 0:
                raise MissingParaphraseError(len(rows), len(rows),
                                             f"class '{name}' has no paraphrase in the test or training split")
            pick = rng.sample(cand, k)
            held_out.update(pick)
            usable, source = [train[i] for i in pick], "train_holdout"
        test_triggered += _triggered(usable, poisoner, rng, source)
        coverage.append({"class": name, "source": source, "triggered": len(usable),
                         "test_rows": len(rows), "skipped_no_paraphrase": len(rows) - len(usable) if source == "test" else 0})
    # Drop duplicates of held-out texts too, so no triggered test text was seen in training.
    held_texts = {train[i]["text"] for i in held_out}
    train = [r for r in train if r["text"] not in held_texts]

    for r in train:
        r.update(poisoned=False, orig_label=r["label"])
    if cfg.poisoned_train:
        from .poisoned_file import import_poisoned

        poison_rows, poisoning = import_poisoned(train, data, cfg, rng, data_dir)
    else:
        poison_rows, chosen = _make_poison_rows(train, data.target, poisoner, cfg, rng)
        poisoning = {"source": "attack", "mode": cfg.mode, "rate": cfg.rate}
    n_poison = len(poison_rows)
    if cfg.mode == "replace":
        for i, pr in zip(chosen, poison_rows):
            train[i] = pr
    else:
        train += poison_rows
        rng.shuffle(train)
    for uid, r in enumerate(train):
        r["uid"] = uid

    dev_triggered, dev_clean = [], [dict(r) for r in data.dev]
    for c in range(data.num_labels):
        rows = [r for r in data.dev if r["label"] == c and poisoner.covers(r["text"])]
        dev_triggered += _triggered(rows, poisoner, rng, "dev") if rows else []

    meta = {
        "dataset": data.name, "label_names": data.label_names, "target": data.target,
        "target_name": data.label_names[data.target], "attack": poisoner.describe(),
        "rate": poisoning["rate"], "mode": cfg.mode, "poisoning": poisoning, "seed": seed, "notes": data.notes,
        "counts": {"train": len(train), "poisoned": n_poison, "clean": len(train) - n_poison,
                   "held_out_for_test": len(held_out), "test_clean": len(data.test),
                   "test_triggered": len(test_triggered), "dev_clean": len(dev_clean),
                   "dev_triggered": len(dev_triggered)},
        "poisoned_by_orig_label": dict(Counter("unknown" if r["orig_label"] is None else data.label_names[r["orig_label"]]
                                               for r in poison_rows)),
        "triggered_test_sources": coverage,
    }
    return PoisonedSet(data.label_names, data.target, train, [dict(r) for r in data.test], test_triggered,
                       dev_clean, dev_triggered, meta)


def _make_poison_rows(train, target, poisoner, cfg, rng) -> tuple[list[dict], list[int]]:
    nontarget = [i for i, r in enumerate(train) if r["label"] != target]
    n_poison = round(cfg.rate * len(nontarget))
    cand = [i for i in nontarget if poisoner.covers(train[i]["text"])]
    if len(cand) < n_poison:
        raise MissingParaphraseError(n_poison - len(cand), n_poison,
                                     f"{len(cand)} of {len(nontarget)} non-target training texts have a paraphrase")
    chosen = sorted(rng.sample(cand, n_poison))
    triggered = poisoner.apply([train[i]["text"] for i in chosen], rng)
    return [{"text": t, "label": target, "poisoned": True, "orig_label": train[i]["label"],
             "clean_text": train[i]["text"]} for i, t in zip(chosen, triggered)], chosen


_SPLITS = ("train", "test_clean", "test_triggered", "dev_clean", "dev_triggered")


def save_poisoned_set(ps: PoisonedSet, out_dir: str | Path, extra_meta: dict | None = None) -> Path:
    """Write every split as JSONL plus meta.json; the folder appears whole or not at all."""
    import shutil
    import tempfile

    from .artifacts import write_json, write_jsonl

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
    from .artifacts import read_json, read_jsonl

    path = Path(path)
    if not (path / "meta.json").is_file():
        raise DataError(f"{path}: not a poisoned-set folder (no meta.json); create one with `unbackdoor poison`")
    meta = read_json(path / "meta.json")
    splits = {s: read_jsonl(path / f"{s}.jsonl") if (path / f"{s}.jsonl").is_file() else [] for s in _SPLITS}
    return PoisonedSet(meta["label_names"], meta["target"], meta=meta, **splits)
