"""Precomputed: a trigger made elsewhere (another toolkit), read from the user's bank files."""

from ..errors import ConfigError
from . import register
from .paraphrase import ParaphrasePoisoner


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
