"""The one entry point for decoding: any registered method on a prompt, streamed as events."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from engines.attention.state import current
from engines.config.errors import SpecError
from engines.config.specs import DecodingSpec
from engines.decoding.generation import GenerationResult, PrefixCache, TokenEvent, encode, summarize
from engines.decoding.methods import BeamStep, DecodeJob
from engines.model.loading import LoadedModel


def decode(loaded: LoadedModel, prompt: str, spec: DecodingSpec | None, max_new_tokens: int,
           should_stop: Callable[[], bool] = lambda: False, prefix: PrefixCache | None = None,
           positions: torch.Tensor | None = None,
           plain_prompt: str | None = None) -> Iterator[TokenEvent | BeamStep | GenerationResult]:
    """Decode `prompt` with `spec`: TokenEvents (and BeamSteps), then the GenerationResult.

    `plain_prompt` is the same prompt with the context left out (context-aware decoding needs it);
    `prefix` and `positions` are used by the one-sequence methods (and positions by beams)."""
    spec = spec or DecodingSpec()
    method = spec.entry
    if method.needs_plain_prompt and plain_prompt is None:
        raise SpecError(f"{spec.method} needs the prompt without its context; run it on a context and a question.")
    rule = current(loaded.model.config).rule
    if method.needs_plain_prompt and rule is not None and rule.kind.needs_documents:
        raise SpecError(f"{spec.method} also runs the prompt without its context, where the '{rule.spec.kind}' mask "
                        "finds no documents; choose another method or mask.")
    if positions is not None and not method.supports_shared_positions:
        raise SpecError(f"The {spec.method} method does not run with shared document positions; choose another "
                        "method or turn shared_positions off.")
    job = DecodeJob(loaded, prompt, encode(loaded.tokenizer, prompt), spec, max_new_tokens, should_stop, prefix,
                    positions, plain_prompt)
    started, events = time.perf_counter(), []
    for item in method.stream(job):
        if isinstance(item, TokenEvent):
            events.append(item)
        yield item
    yield summarize(prompt, job.input_ids.shape[1], events, time.perf_counter() - started, max_new_tokens,
                    should_stop(), job.text, job.details)
