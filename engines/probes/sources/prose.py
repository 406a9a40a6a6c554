"""Prose: sentences of the Python reference documentation and the essays in assets/essays."""
from __future__ import annotations

from engines.config.kinds import register
from engines.probes.haystack import cycle_from, prose_sentences
from engines.probes.sources import HaystackSource


@register
class Prose(HaystackSource):
    name = "prose"
    description = "sentences of the Python reference documentation and the essays in assets/essays"

    def units(self, rng):
        return cycle_from(prose_sentences(), rng)
