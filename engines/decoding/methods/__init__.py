"""Decoding methods, one `DecodingMethod` per module; `engines.decoding.decode.decode` runs any of them.

A method declares its settings and flags (beam: several sequences, events at the end; needs the
prompt without its context; capture: one forward pass per token on one sequence) and streams
TokenEvents (beam methods also BeamStep progress); what it adds to the result (beams, ICN answers) it
puts in `job.details`. Methods that pick one token from one distribution per step derive from
`ChooserMethod` and only write their chooser.

transformers 5 no longer ships diverse beam search, contrastive search or DoLa, so they are written
here from their papers; beam search follows generate()'s rules so that it returns the same beams.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from engines.config.kinds import Kind
from engines.config.specs import DecodingSpec
from engines.decoding.generation import PrefixCache, TokenEvent, stream_tokens
from engines.model.loading import LoadedModel


@dataclass(frozen=True)
class BeamStep:
    """Progress of a beam method: the step and the best running beam's text so far."""

    step: int
    best: str


@dataclass
class DecodeJob:
    """One decoding run: what a method reads, and what it adds to the result (`text`, `details`)."""

    loaded: LoadedModel
    prompt: str
    input_ids: torch.Tensor  # [1, prompt tokens]
    spec: DecodingSpec
    max_new_tokens: int
    should_stop: Callable[[], bool]
    prefix: PrefixCache | None = None
    positions: torch.Tensor | None = None  # shared document positions of the prompt, if any
    plain_prompt: str | None = None  # the prompt without its context
    text: str | None = None  # the answer, when it is not the events' text
    details: dict[str, Any] = field(default_factory=dict)


class DecodingMethod(Kind):
    family: ClassVar[str] = "decoding"
    beam: ClassVar[bool] = False  # several sequences; token events come at the end
    needs_plain_prompt: ClassVar[bool] = False
    supports_capture: ClassVar[bool] = False  # one forward pass per token on one sequence
    supports_shared_positions: ClassVar[bool] = True

    def stream(self, job: DecodeJob) -> Iterator[TokenEvent | BeamStep]:
        raise NotImplementedError


class ChooserMethod(DecodingMethod):
    """One sequence, one choice per step: the shared token loop (KV cache, prefix reuse, positions)
    with this method's chooser (logits [vocab], model outputs, ids so far) -> (token, shown logits, extra)."""

    supports_capture: ClassVar[bool] = True
    hidden_states: ClassVar[bool] = False  # the chooser reads every layer's hidden state

    def chooser(self, job: DecodeJob) -> Callable:
        raise NotImplementedError

    def stream(self, job: DecodeJob) -> Iterator[TokenEvent]:
        yield from stream_tokens(job.loaded, job.input_ids, job.max_new_tokens, job.should_stop, job.prefix,
                                 job.positions, self.chooser(job), self.hidden_states)
