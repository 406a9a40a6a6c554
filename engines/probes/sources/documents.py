"""Titled documents, numbered as search results (Lost in the Middle's multi-document QA)."""
from __future__ import annotations

from engines.config.kinds import register
from engines.probes.haystack import cycle_from, document, multidoc_set, prose_sentences
from engines.probes.sources import HaystackSource


@register
class Documents(HaystackSource):
    name = "documents"
    description = "titled documents: the asset set first (shuffled), then Python reference topics"
    separator, numbered = "\n\n", True

    def units(self, rng):
        import pydoc_data.topics

        docs = [document(d["title"], d["text"]) for d in multidoc_set()["documents"]]
        rng.shuffle(docs)
        yield from docs
        topics = sorted(pydoc_data.topics.topics)
        sentences = prose_sentences()
        for i in cycle_from(tuple(range(len(topics))), rng):
            body = " ".join(sentences[(i * 7 + k) % len(sentences)] for k in range(3))
            yield document(f"Python reference: {topics[i]}", body)
