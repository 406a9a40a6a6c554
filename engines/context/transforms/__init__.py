"""Context transforms: a rewrite of (context, question) applied before the prompt is formatted, one
`TransformKind` per module. The builders find every copy of the context in the prompt they format, so
needles, documents and the question rows stay marked wherever a transform puts them. A kind that
orders documents (`orders_documents`) works on a built haystack's documents before they are numbered."""
from __future__ import annotations

from typing import ClassVar

from engines.config.errors import HaystackError
from engines.config.kinds import Kind, lookup


class TransformKind(Kind):
    family: ClassVar[str] = "transform"
    orders_documents: ClassVar[bool] = False

    def apply(self, spec, context: str, question: str) -> tuple[str, str]:
        """The transformed context and question (the context may appear in it more than once)."""
        return context, question

    def order(self, spec, documents: list[str], question: str) -> list[int]:
        """The documents' new order, as indices into `documents`."""
        return list(range(len(documents)))


def transformed(spec, context: str, question: str) -> tuple[str, str]:
    """(context, question) under `spec` (a TransformSpec, or None for none); an empty context stays empty."""
    if spec is None or not context:
        return context, question
    kind = lookup("transform", spec.kind)
    if kind.orders_documents:
        raise HaystackError(f"'{spec.kind}' orders the documents of a built haystack; choose a task whose haystack "
                            "is documents (multidoc_qa) or the 'documents' haystack, or give your context in the "
                            "order you want.")
    return kind.apply(spec, context, question)


def orders_documents(spec) -> bool:
    return spec is not None and lookup("transform", spec.kind).orders_documents


def document_order(spec, documents: list[str], question: str) -> list[int]:
    """The order `spec`, a transform that orders documents, gives a built haystack's documents."""
    return lookup("transform", spec.kind).order(spec, documents, question)
