"""The lab's lexical retriever: Okapi BM25 (rank_bm25's BM25Okapi: k1 1.5, b 0.75, a term found in more
than half of the documents weighted by a floor of 0.25 x the mean idf) over lower-cased words less common
function words. It orders documents for the `reorder` transform and picks the hard negatives of
multi-document QA."""
from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    "a an and are as at be been but by did do does for from had has have how in into is it its of on or that "
    "the their there this to was were what when where which who whom why will with question answer".split())


def words(text: str) -> list[str]:
    """The words BM25 counts: lower-cased, without function words (which match every document)."""
    return [w for w in WORD.findall(text.lower()) if w not in STOP_WORDS]


def bm25_scores(query: str, documents: list[str]) -> list[float]:
    """Each document's BM25 score against `query`, the collection being `documents` themselves."""
    from rank_bm25 import BM25Okapi

    if not documents:
        return []
    return [float(score) for score in BM25Okapi([words(d) or [""] for d in documents]).get_scores(words(query))]


def ranking(query: str, documents: list[str]) -> list[int]:
    """Indices of `documents`, the best-scoring first; equal scores keep their given order."""
    scores = bm25_scores(query, documents)
    return sorted(range(len(documents)), key=lambda i: -scores[i])
