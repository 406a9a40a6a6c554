"""The lexical retriever against Okapi BM25 written out here, and the rule-based structurizer's outline."""
import math
import re

import pytest

from engines.config.errors import HaystackError
from engines.config.specs import TransformSpec
from engines.context.transforms import transformed
from engines.probes.haystack import document, multidoc_set
from engines.probes.retrieval import bm25_scores, ranking, words


def okapi(query: list[str], corpus: list[list[str]], k1=1.5, b=0.75, epsilon=0.25) -> list[float]:
    """BM25 from its formula: idf log((N - n + 0.5) / (n + 0.5)), a negative one raised to epsilon x the mean idf."""
    n = len(corpus)
    average_length = sum(map(len, corpus)) / n
    vocabulary = {w for doc in corpus for w in doc}
    idf = {w: math.log((n - sum(w in doc for doc in corpus) + 0.5) / (sum(w in doc for doc in corpus) + 0.5))
           for w in vocabulary}
    floor = epsilon * sum(idf.values()) / len(idf)
    idf = {w: v if v >= 0 else floor for w, v in idf.items()}
    return [sum(idf.get(w, 0.0) * doc.count(w) * (k1 + 1)
                / (doc.count(w) + k1 * (1 - b + b * len(doc) / average_length)) for w in query) for doc in corpus]


def test_scores_equal_okapi_bm25_written_out():
    docs = [document(d["title"], d["text"]) for d in multidoc_set()["documents"]]
    for item in multidoc_set()["questions"]:
        expected = okapi(words(item["question"]), [words(d) for d in docs])
        assert bm25_scores(item["question"], docs) == pytest.approx(expected, abs=1e-9)
    best = [ranking(item["question"], docs)[0] for item in multidoc_set()["questions"]]
    gold = [[d["title"] for d in multidoc_set()["documents"]].index(item["gold"]) for item in multidoc_set()["questions"]]
    assert sum(b == g for b, g in zip(best, gold)) >= 6  # a lexical retriever finds most gold documents first


def test_equal_scores_keep_their_order():
    assert ranking("zebra", ["a cat", "a dog", "the zebra", "a cow"]) == [2, 0, 1, 3]


def test_structurize_keeps_every_sentence_in_numbered_sections():
    context = ("Read these.\nDocument [1](Title: Harrow Hill) Harrow Hill is high. It has hares.\n"
               "Document [2](Title: Lune River) The Lune is long.\n" + " ".join(f"Fact {i} holds." for i in range(7)))
    outline, question = transformed(TransformSpec.parse("structurize:points=3"), context, "Why?")
    lines = outline.splitlines()
    assert question == "Why?" and lines[0] == "The context in 6 numbered sections of numbered points."
    assert lines[1:8] == ["1. Part 1", "1.1. Read these.", "2. Harrow Hill",
                          "2.1. Document [1](Title: Harrow Hill) Harrow Hill is high.", "2.2. It has hares.",
                          "3. Lune River", "3.1. Document [2](Title: Lune River) The Lune is long."]
    assert lines[8:] == ["4. Part 4", "4.1. Fact 0 holds.", "4.2. Fact 1 holds.", "4.3. Fact 2 holds.",
                         "5. Part 5", "5.1. Fact 3 holds.", "5.2. Fact 4 holds.", "5.3. Fact 5 holds.",
                         "6. Part 6", "6.1. Fact 6 holds."]


def test_reorder_needs_a_built_haystack_of_documents():
    with pytest.raises(HaystackError, match="orders the documents of a built haystack"):
        transformed(TransformSpec.parse("reorder"), "Some text.", "Why?")


def test_structurize_is_undone_by_dropping_headings_and_numbers():
    from engines.probes.haystack import prose_sentences, split_sentences

    context = " ".join(prose_sentences()[:200])
    outline, _ = transformed(TransformSpec.parse("structurize"), context, "Why?")
    points = [line.split(". ", 1)[1] for line in outline.splitlines()[1:] if re.match(r"\d+\.\d+\. ", line)]
    sentences = split_sentences(context)
    assert " ".join(points) == context and points == sentences
    assert len(outline.splitlines()) == 1 + len(sentences) + math.ceil(len(sentences) / 5)  # scope, points, headings
