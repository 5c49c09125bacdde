"""BadNets: rare words inserted at random positions."""

from . import register
from .insertion import InsertionPoisoner


@register
class BadNets(InsertionPoisoner):
    name = "badnets"
    default_triggers = ("cf", "bb", "ak", "mn")
