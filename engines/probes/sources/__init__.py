"""Haystack sources, one `HaystackSource` per module: where filler units come from and how they join."""
from __future__ import annotations

import random
from collections.abc import Iterator
from typing import ClassVar

from engines.config.kinds import Kind
from engines.probes.haystack import Source


class HaystackSource(Kind):
    family: ClassVar[str] = "source"
    separator: ClassVar[str] = " "
    opening: ClassVar[str] = ""
    closing: ClassVar[str] = ""
    numbered: ClassVar[bool] = False  # documents: rendered as "Document [n]" in their final order

    def units(self, rng: random.Random) -> Iterator[str]:
        """An endless stream of filler units drawn with `rng`."""
        raise NotImplementedError

    def source(self, upload_text: str | None = None) -> Source:
        return Source(self.name, self.units, self.separator, self.opening, self.closing, self.numbered)
