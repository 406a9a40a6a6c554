"""Benchmark-faithful tasks, one module per benchmark, each reproducing its released code's prompts,
haystacks, placement, length rules and metric (the tasks named with a dot: ruler.cwe, kamradt.niah).

`SIZED` builders make a sample from a size and are fitted to the length by searching the size (RULER,
the Landmark passkey); `DIRECT` builders follow their benchmark's own rule for the length: the NIAH test
cuts its essays to L tokens, Counting-Stars takes 0.8 L words, Lost in the Middle has fixed sizes (the
length is then only a ceiling for the prompt and its new tokens).
"""
from __future__ import annotations

from engines.config.kinds import Setting
from engines.probes.benchmarks import counting_stars, kamradt, landmark, litm, needle_threading, ruler

SIZED = ruler.SIZED | {"landmark_passkey": (landmark.passkey, (), "noise characters", 1)}
# builder -> (sample(tokenizer, length, depth, seed, settings), settings, whether L only caps the prompt)
DIRECT = {"kamradt_niah": (kamradt.niah, kamradt.SETTINGS, False),
          "litm_kv": (litm.kv, litm.SETTINGS, True),
          "litm_qa": (litm.qa, litm.QA_SETTINGS, True),
          "counting_stars_en": (counting_stars.stars, counting_stars.SETTINGS, False),
          "nt_single": (needle_threading.single, (), False)}
UNAVAILABLE = ruler.UNAVAILABLE | {
    **{f"nt.{name}": "Needle Threading releases this task only as data on the Hugging Face Hub (unreachable here) with "
                     "its prompt described in the paper; the lab's own nt_* preset is its stand-in"
       for name in ("multiple", "conditional", "threading", "multithreading")}}


def settings_of(builder: str) -> tuple[Setting, ...]:
    return (SIZED.get(builder) or DIRECT[builder])[1]
