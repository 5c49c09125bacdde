"""AddSent: a fixed sentence inserted at a random position."""

from . import register
from .insertion import InsertionPoisoner


@register
class AddSent(InsertionPoisoner):
    name = "addsent"

    def defaults_for(self, data):
        return ("I watch this 3D movie",) if data.name == "sst2" else ("no cross no crown",)
