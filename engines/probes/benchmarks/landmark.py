"""The passkey test as the Landmark Attention authors' released code builds it (epfml/landmark-attention,
llama/run_test.py): a task line, the noise sentence repeated and cut to a number of characters split at
a random point by the seed, the key line, the rest of the noise, and the question ending in "The pass key
is"; ten new tokens; correct when the first number of the answer is the key.

The reference states sizes in characters of noise; here the noise is the most that keeps the prompt plus
the ten new tokens within the length. It feeds raw text to base models; the lab's chat template, when on,
wraps the same text as one user turn.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from engines.probes.benchmarks.ruler import NOISE, Sample

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz "
        "you about the important information there.")
QUESTION = "What is the pass key? The pass key is"


def passkey(seed: int, params: dict, size: int, length: int, count_tokens: Callable[[str], int]) -> Sample:
    """`size` characters of noise, split at a point drawn by the seed, around the key line."""
    rng = random.Random(f"landmark-{seed}")
    before = rng.randint(0, size)
    noise = " ".join([NOISE] * (size // len(NOISE) + 2))
    key = rng.randint(1, 50000)
    line = f"The pass key is {key}. Remember it. {key} is the pass key."
    return Sample("\n".join([TASK, noise[:before], line, noise[:size - before], QUESTION]), "", (str(key),), (line,),
                  question=QUESTION)
