"""Context transforms: a rewrite of (context, question) applied before the prompt is formatted, one
`TransformKind` per module. The builders find every copy of the context in the prompt they format, so
needles, documents and the question rows stay marked wherever a transform puts them."""
from __future__ import annotations

from typing import ClassVar

from engines.config.kinds import Kind, lookup


class TransformKind(Kind):
    family: ClassVar[str] = "transform"

    def apply(self, spec, context: str, question: str) -> tuple[str, str]:
        """The transformed context and question (the context may appear in it more than once)."""
        raise NotImplementedError


def transformed(spec, context: str, question: str) -> tuple[str, str]:
    """(context, question) under `spec` (a TransformSpec, or None for none); an empty context stays empty."""
    if spec is None or not context:
        return context, question
    return lookup("transform", spec.kind).apply(spec, context, question)
