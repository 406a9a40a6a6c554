"""In-context navigation: list several different short answers, each new one started from the best
first token not yet tried; plain top-k expansion is run beside it for comparison."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from engines.config.kinds import Setting, register
from engines.config.specs import DecodingSpec
from engines.decoding.generation import PrefixCache, TokenEvent, encode, stream_tokens
from engines.decoding.methods import DecodingMethod
from engines.model.loading import LoadedModel


def _next_logits(loaded: LoadedModel, ids: list[int], prefix: PrefixCache) -> torch.Tensor:
    reused = prefix.reuse_for(ids)
    logits = loaded.model(input_ids=torch.tensor([ids[reused:]], device=loaded.device), cache=prefix.cache,
                          use_cache=True, logits_to_keep=1).logits[0, -1]
    prefix.ids = ids
    return logits


@torch.inference_mode()
def stream_icn(loaded: LoadedModel, prompt: str, spec: DecodingSpec,
               should_stop: Callable[[], bool]) -> Iterator[TokenEvent | dict]:
    """In-context navigation: the prompt continues 'Answers:\\n1. "a1"\\n2. "' with the answers found so far;
    each new answer starts from the best first token not yet tried and is completed greedily to the
    closing quote. Plain top-k expansion (the k best first tokens after '1. "', each completed) is
    run too, for comparison. Yields TokenEvents, then {"answers", "topk_answers", ...}."""
    tokenizer, count, limit = loaded.tokenizer, spec.get("answers"), spec.get("answer_tokens")
    prefix, started, index = PrefixCache(), time.perf_counter(), 0

    def listing(answers: list[str]) -> list[int]:
        lines = "".join(f'{i}. "{a}"\n' for i, a in enumerate(answers, 1))
        return encode(tokenizer, prompt + "Answers:\n" + lines + f'{len(answers) + 1}. "')[0].tolist()

    def complete(ids: list[int], first: int, answer: int) -> Iterator[TokenEvent | str]:
        nonlocal index
        ids_tensor = torch.tensor([ids + [first]])
        text = tokenizer.decode([first])
        if '"' not in text and "\n" not in text:
            for event in stream_tokens(loaded, ids_tensor, limit - 1, should_stop, prefix):
                if '"' in event.text or "\n" in event.text:
                    text += event.text
                    break
                text += event.text
                yield TokenEvent(index, event.token_id, event.text, event.prob, event.top, event.entropy,
                                 time.perf_counter() - started, {"answer": answer})
                index += 1
        yield text.split('"')[0].split("\n")[0].strip()

    answers, tried = [], set()
    for number in range(count):
        if should_stop():
            break
        ids = listing(answers)
        ranked = torch.argsort(_next_logits(loaded, ids, prefix), descending=True).tolist()
        first = next(t for t in ranked if t not in tried)
        tried.add(first)
        *events, answer = complete(ids, first, number)
        yield from events
        answers.append(answer)
    start_ids = listing([])
    expansion = []
    for first in torch.topk(_next_logits(loaded, start_ids, prefix), count).indices.tolist():
        if should_stop():
            break
        *_, answer = complete(start_ids, first, -1)
        expansion.append(answer)
    distinct = lambda items: round(len({a.lower() for a in items}) / len(items), 4) if items else 0.0  # noqa: E731
    yield {"answers": answers, "topk_answers": expansion, "distinct_share": distinct(answers),
           "topk_distinct_share": distinct(expansion)}


@register
class InContextNavigation(DecodingMethod):
    name = "icn"
    description = ("in-context navigation: list several different short answers, each new one started from the "
                   "best first token not yet tried")
    supports_shared_positions = False
    settings = (
        Setting("answers", "int", 5, "how many answers to list", 1, 20),
        Setting("answer_tokens", "int", 12, "new tokens per answer at most", 1, 64),
    )

    def stream(self, job):
        for item in stream_icn(job.loaded, job.prompt, job.spec, job.should_stop):
            if isinstance(item, TokenEvent):
                yield item
        job.details = item if isinstance(item, dict) else {}
        job.text = "\n".join(f"{i}. {a}" for i, a in enumerate(job.details.get("answers", []), 1))
