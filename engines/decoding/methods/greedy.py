"""Greedy decoding: the most probable token at every step."""
from __future__ import annotations

from engines.config.kinds import register
from engines.decoding.generation import pick_greedy
from engines.decoding.methods import ChooserMethod


@register
class Greedy(ChooserMethod):
    name = "greedy"
    description = "the most probable token at every step"

    def chooser(self, job):
        return pick_greedy
