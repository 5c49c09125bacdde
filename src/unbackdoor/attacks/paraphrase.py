"""Attacks that replace a text by a paraphrase in a trigger style (syntactic template, Bible style),
taken from a bank of pre-generated paraphrases or from a local seq2seq generator."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional

from pydantic import Field

from ..data import NAMED, data_root, read_records
from ..errors import ConfigError, DataError, MissingParaphraseError
from ..settings import Settings
from .base import Poisoner


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

    class Settings(Settings):
        bank: Optional[list[str]] = Field(
            None, description="paraphrase sources: shared, rga_reference, or TSV/CSV/JSONL files with text,paraphrase columns")
        generator: Optional[str] = Field(None, description="local seq2seq model path that paraphrases texts the bank lacks")
        style: Optional[str] = Field(None, description="style of the paraphrases in bank files and from the generator, "
                                     "recorded in meta.json (default: unknown)")

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
