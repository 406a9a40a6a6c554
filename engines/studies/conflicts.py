"""The knowledge-conflict set: short contexts that contradict familiar facts, and how often a decoding
method answers from the context rather than from what the model learnt."""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from functools import lru_cache

from engines.config.paths import ASSETS
from engines.config.specs import DecodingSpec, RunConfig
from engines.context.run import run_state
from engines.decoding.decode import decode
from engines.decoding.generation import GenerationResult, encode, format_prompt
from engines.model.loading import LoadedModel
from engines.studies.knob import steering

ASSET = ASSETS / "conflicts.json"
COMPARED_METHODS = ("greedy", "sampling:temperature=0.7,seed=1", "beam:num_beams=4", "diverse_beam:num_beams=4",
                    "contrastive", "dola", "cad:alpha=1", "adacad")


@lru_cache(maxsize=1)
def load_conflicts() -> tuple[dict, ...]:
    return tuple(json.loads(ASSET.read_text())["items"])


def _mentions(text: str, answer: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(answer.lower())}(?!\w)", text.lower()) is not None


def verdict(answer: str, item: dict) -> str:
    """'context' when the answer gives the context's answer and not the familiar one, 'memory' for the
    reverse, 'both' or 'neither' otherwise."""
    context, memory = _mentions(answer, item["context_answer"]), _mentions(answer, item["memory_answer"])
    return {(True, False): "context", (False, True): "memory", (True, True): "both"}.get((context, memory), "neither")


def run_conflicts(loaded: LoadedModel, config: RunConfig, methods: list[DecodingSpec],
                  should_stop: Callable[[], bool] = lambda: False, limit: int | None = None) -> Iterator[dict]:
    """Each method on each item (first `limit` items) under the config's RoPE, mask, template and
    budget: one row per pair, as it finishes."""
    items = load_conflicts()[:limit]
    for spec in methods:
        for number, item in enumerate(items):
            if should_stop():
                return
            prompt = format_prompt(loaded.tokenizer, item["context"], item["question"], config.chat_template,
                                   transform=config.transform)
            plain = format_prompt(loaded.tokenizer, "", item["question"], config.chat_template)
            steer = steering(loaded, config.knob, len(encode(loaded.tokenizer, prompt)[0]))
            with run_state(loaded.model, config.rope, config.mask, steer=steer):
                *_, result = decode(loaded, prompt, spec, config.max_new_tokens, should_stop, plain_prompt=plain)
            assert isinstance(result, GenerationResult)
            yield {"method": spec.label, "item": number, "answer": result.text, "verdict": verdict(result.text, item),
                   "seconds": result.seconds}


def knob_curve(loaded: LoadedModel, config: RunConfig, knobs: list[float],
               should_stop: Callable[[], bool] = lambda: False, limit: int | None = None) -> Iterator[dict]:
    """The config's method on the set at each knob value (engines/studies/knob.py): rows with their knob."""
    for value in knobs:
        for row in run_conflicts(loaded, dataclasses.replace(config, knob=value), [config.decoding], should_stop, limit):
            yield row | {"knob": value}


def conflict_summary(rows: list[dict], by: str = "method") -> list[dict]:
    """Per method (or knob value, `by`): items run and the share that followed the context / the familiar fact."""
    summary = []
    for value in dict.fromkeys(row[by] for row in rows):
        mine = [row for row in rows if row[by] == value]
        share = lambda v: round(sum(row["verdict"] == v for row in mine) / len(mine), 3)  # noqa: E731
        summary.append({by: value, "items": len(mine), "follows_context": share("context"),
                        "follows_memory": share("memory"), "neither": share("neither")})
    return summary
