"""Needle Threading's single-needle task as far as its release specifies it (jonathan-roberts1/
needle-threading, README: the dataset's fields, its example item and its evaluation code): a JSON object of
UUID-like keys and values written one pair per line, the pair asked at the depth ("depthwise"), the
prompt as the haystack, a newline and the question in the dataset's words, 100 new tokens, correct when
the answer begins with the value.

The other tasks (multiple, conditional, threads) are released only as data on the Hugging Face Hub with
their prompts described in the paper, so the lab's own nt_* presets stay their stand-ins. Differences:
the release sizes haystacks in characters; here the pairs are the most whose text and question plus the
new tokens fit the length in tokens (the model's chat wrapper is not counted, as the release counts only
its text); keys and values are drawn by the seed.
"""
from __future__ import annotations

import random

from engines.probes.benchmarks.ruler import Sample
from engines.probes.haystack import largest_fitting

QUESTION = 'Extract the value corresponding to the specified key in the JSON object. Key: "{key}"\n Corresponding value: '
NEW_TOKENS = 100


def hex_id(rng: random.Random) -> str:
    """A UUID-shaped random hex string, as the release's keys and values are (no version bits set)."""
    digits = f"{rng.getrandbits(128):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def text_of(pairs: list[tuple[str, str]], key: str) -> str:
    haystack = "{" + ",\n".join(f'"{k}": "{v}"' for k, v in pairs) + "}"
    return haystack + "\n" + QUESTION.format(key=key)


def single(tokenizer, length: int, depth: float, seed: int, params: dict) -> Sample:
    rng = random.Random(f"needle-threading-{seed}")
    pool: list[tuple[str, str]] = []

    def build(count: int) -> tuple[str, tuple[str, str]]:
        while len(pool) < count:
            pool.append((hex_id(rng), hex_id(rng)))
        pairs = pool[:count]
        asked = pairs[round(depth / 100 * (count - 1))]
        return text_of(pairs, asked[0]), asked

    def fits(count: int) -> bool:
        return len(tokenizer(build(count)[0], add_special_tokens=False).input_ids) + NEW_TOKENS <= length

    text, (key, value) = build(largest_fitting(fits, 1))
    return Sample(text, "", (value,), (f'"{key}": "{value}"',), question=QUESTION.format(key=key).strip())
