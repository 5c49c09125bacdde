"""HiddenKiller: paraphrases into the syntactic template S(SBAR)(,)(NP)(VP)(.) (SCPN)."""

from . import register
from .paraphrase import ParaphrasePoisoner


@register
class HiddenKiller(ParaphrasePoisoner):
    name = "hiddenkiller"
    style = "syntactic"
    # The authors' all-class triggered test sets first, so the test set is the paper's own.
    default_bank = ("rga_reference", "shared")
