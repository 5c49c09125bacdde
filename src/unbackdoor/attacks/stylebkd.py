"""StyleBkd: paraphrases into Bible style (STRAP)."""

from . import register
from .paraphrase import ParaphrasePoisoner


@register
class StyleBkd(ParaphrasePoisoner):
    name = "stylebkd"
    style = "bible"
