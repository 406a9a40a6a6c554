"""Lost in the Middle's two tasks as its released code builds them (nelson-liu/lost-in-the-middle,
src/lost_in_the_middle/prompting.py and prompts/kv_retrieval*.prompt): a JSON object of UUID pairs in
its own layout, a fixed number of pairs (75, 140 or 300 in the paper), the asked pair at an index, the
template (optionally with the key also before the data: query-aware contextualization), 100 new tokens,
correct when the value appears in the answer (scripts/evaluate_kv_responses.py). Multi-document QA: its
qa.prompt template, "Document [i](Title: ...) text" lines, the gold document at an index among distractors,
100 new tokens, best_subspan_em on the answer's first line (scripts/evaluate_qa_responses.py).

The paper's kv data files are random UUID pairs; here they are drawn by the seed. Its QA data
(NaturalQuestions-Open with Contriever-retrieved distractors, 10, 20 or 30 documents) cannot be fetched
offline: litm.qa asks the lab's own written questions and documents (assets/multidoc.json), so it allows
at most as many documents as that set holds; its distractors are drawn at random, or (distractors=retrieved)
are the lab's BM25 retriever's best in score order, as the paper's were Contriever's. The asked pair's or
gold document's index is the depth's share of them (depth 0: the first, 100: the last). The length does
not size the prompt: it is the most the prompt plus its new tokens may take.
"""
from __future__ import annotations

import random

from engines.config.errors import HaystackError
from engines.config.kinds import Setting
from engines.probes.benchmarks.ruler import Sample
from engines.probes.haystack import document, multidoc_set, random_uuid
from engines.probes.retrieval import ranking

TEMPLATE = ("Extract the value corresponding to the specified key in the JSON object below.\n\n{query}JSON data:\n"
            "{records}\n\nKey: \"{key}\"\nCorresponding value:")


def records(pairs: list[tuple[str, str]]) -> str:
    """The JSON object as the released code writes it: one pair per line, "{" before the first, "}" after the last."""
    return "".join(("{" if i == 0 else " ") + f'"{k}": "{v}"' + (",\n" if i != len(pairs) - 1 else "}")
                   for i, (k, v) in enumerate(pairs))


def kv(tokenizer, length: int, depth: float, seed: int, params: dict) -> Sample:
    rng = random.Random(f"litm-{seed}")
    count = params["num_pairs"]
    pairs = [(random_uuid(rng), random_uuid(rng)) for _ in range(count)]
    key, value = pairs[round(depth / 100 * (count - 1))]
    query = f'Key: "{key}"\n\n' if params["query_aware"] else ""
    text = TEMPLATE.format(query=query, records=records(pairs), key=key)
    return Sample(text, "", (value,), (f'"{key}": "{value}"',), question=f'Key: "{key}"\nCorresponding value:')


QA_TEMPLATE = ("Write a high-quality answer for the given question using only the provided search results (some of "
               "which might be irrelevant).\n\n{search_results}\n\nQuestion: {question}\nAnswer:")


def qa(tokenizer, length: int, depth: float, seed: int, params: dict) -> Sample:
    data = multidoc_set()
    count = params["num_documents"]
    if count > len(data["documents"]):
        raise HaystackError(f"The lab's document set holds {len(data['documents'])} documents; choose num_documents of "
                            f"at most {len(data['documents'])} (the paper's 20 and 30 need its retrieval data).")
    rng = random.Random(f"litm-qa-{seed}")
    item = data["questions"][rng.randrange(len(data["questions"]))]
    gold = next(d for d in data["documents"] if d["title"] == item["gold"])
    others = [d for d in data["documents"] if d is not gold]
    if params["distractors"] == "retrieved":  # the paper's way: the retriever's best that are not the gold one
        documents = [others[i] for i in ranking(item["question"], [document(d["title"], d["text"]) for d in others])]
        documents = documents[:count - 1]
    else:
        documents = rng.sample(others, count - 1)
    documents.insert(round(depth / 100 * (count - 1)), gold)
    lines = [f"Document [{i + 1}](Title: {d['title']}) {d['text']}" for i, d in enumerate(documents)]
    gold_line = lines[documents.index(gold)]
    return Sample(QA_TEMPLATE.format(search_results="\n".join(lines), question=item["question"]), "",
                  tuple(item["answers"]), (gold_line,), question=f"Question: {item['question']}\nAnswer:")


QA_SETTINGS = (Setting("num_documents", "int", 10, "documents, the gold one included (the paper: 10, 20, 30)", 2, 1000),
               Setting("distractors", "str", "random", "the other documents: random, or retrieved (BM25's best, in "
                       "its order, as the paper's were Contriever's)", choices=("random", "retrieved")))
SETTINGS = (Setting("num_pairs", "int", 75, "key-value pairs (the paper: 75, 140, 300)", 2, 2000),
            Setting("query_aware", "int", 0, "1: the key also before the data (query-aware contextualization)", 0, 1))

