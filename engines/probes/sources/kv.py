"""A JSON object of random UUID pairs (Lost in the Middle's key-value retrieval)."""
from __future__ import annotations

from engines.config.kinds import register
from engines.probes.haystack import kv_pair, random_uuid
from engines.probes.sources import HaystackSource


@register
class KeyValue(HaystackSource):
    name = "kv"
    description = "a JSON object of random UUID key-value pairs"
    separator, opening, closing = ",\n", "{\n", "\n}"

    def units(self, rng):
        while True:
            yield kv_pair(random_uuid(rng), random_uuid(rng))
