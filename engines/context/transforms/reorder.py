"""Retrieval reordering (Jin et al. 2024, Long-Context LLMs Meet RAG, section 5): the documents of the
context put in the order of their BM25 score against the question. `ends` is the paper's reordering
(the best at the start and the end, the weakest in the middle, where long-context models read least);
`score` is the retriever's own order and `reversed` puts the best last, next to the question."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.context.transforms import TransformKind
from engines.probes.retrieval import ranking


@register
class Reorder(TransformKind):
    name = "reorder"
    description = "the documents ordered by their BM25 score against the question"
    settings = (Setting("order", "str", "ends", "ends: the best first and last, the weakest in the middle; "
                        "score: the best first; reversed: the best last", choices=("ends", "score", "reversed")),)
    orders_documents = True

    def order(self, spec, documents, question):
        ranked = ranking(question, documents)
        if spec.get("order") == "score":
            return ranked
        if spec.get("order") == "reversed":
            return ranked[::-1]
        return ranked[0::2] + ranked[1::2][::-1]  # ranks 1, 3, 5, ... then ..., 6, 4, 2
