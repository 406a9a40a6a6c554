"""Query-aware contextualization (Liu et al. 2023, Lost in the Middle, section 4.2): the question both
before and after the context, so a decoder-only model reads the context knowing what is asked."""
from __future__ import annotations

from engines.config.kinds import register
from engines.context.transforms import TransformKind


@register
class Sandwich(TransformKind):
    name = "sandwich"
    description = "the question before and after the context (query-aware contextualization)"

    def apply(self, spec, context, question):
        return f"{question}\n\n{context}", question
