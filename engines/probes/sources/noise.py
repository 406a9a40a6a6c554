"""RULER's noise haystack: five short sentences repeated."""
from __future__ import annotations

from engines.config.kinds import register
from engines.probes.sources import HaystackSource

NOISE_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                   "There and back again.")


@register
class Noise(HaystackSource):
    name = "noise"
    description = "five short sentences repeated (The grass is green. The sky is blue. ...)"

    def units(self, rng):
        while True:
            yield from NOISE_SENTENCES
