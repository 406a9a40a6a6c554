"""Attention masks as pure functions of (query index, key index, segment ids), one `MaskKind` per module.

A kind owns its visibility rule (`visible`, on broadcastable index tensors: queries [Q, 1] against keys
[1, K]) and, for window masks run block by block, its far-key rule: which first keys stay visible
beyond the window and at what distance. A kind that moves keys per query and head (PINE) gives its own
scores instead (`scorer`). Segment ids mark a prompt's parts: -1 the prefix before the
documents, 0..n-1 the documents, -2 the rest (question, answer, generated tokens).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from engines.config.kinds import Kind, lookup
from engines.config.specs import MaskSpec

PREFIX, SUFFIX = -1, -2


class MaskKind(Kind):
    """A mask kind. Window kinds (`blockwise`) run block by block with no dense mask; the others give
    the attention function a bool mask built from `visible`."""

    family: ClassVar[str] = "mask"
    needs_documents: ClassVar[bool] = False  # needs a prompt made of documents (segment ids)
    looks_ahead: ClassVar[bool] = False  # earlier tokens see later ones
    blockwise: ClassVar[bool] = False
    scores_itself: ClassVar[bool] = False  # gives the attention function its scores (`scorer`), no bool mask

    def visible(self, spec: MaskSpec, q: torch.Tensor, k: torch.Tensor, seg_q: torch.Tensor | None,
                seg_k: torch.Tensor | None) -> torch.Tensor:
        """Which keys each query sees (bool, q [Q, 1] against k [1, K]); segment ids given when needed."""
        raise NotImplementedError

    def resolved(self, spec: MaskSpec, trained: int) -> MaskSpec:
        """`spec` with the settings that depend on the model (its trained length) filled in."""
        return spec

    def shares_positions(self, spec: MaskSpec) -> bool:
        return self.needs_documents and bool(spec.get("shared_positions"))

    def window(self, spec: MaskSpec) -> int:
        """Blockwise kinds: how many of the latest keys each query sees at their true distance."""
        raise NotImplementedError

    def far_keys(self, spec: MaskSpec) -> int:
        """Blockwise kinds: how many first keys stay visible beyond the window (sinks, global keys)."""
        return 0

    def far_rotation(self, spec: MaskSpec, q_pos: torch.Tensor, k_pos: torch.Tensor, count: int,
                     window: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Blockwise kinds: extra positions to rotate the queries [Q] and the far keys [count] by when
        they meet beyond the window (None: as they are)."""
        return None, None

    def scorer(self, spec: MaskSpec, segments: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
               q_pos: torch.Tensor, inv_freq: torch.Tensor, scaling: float, kept: dict):
        """Kinds that score for themselves: a function of query row indices (into `query`) giving scores
        [b, h, rows, kv] (in the query's dtype, as eager attention keeps them), -inf where a key is not
        seen. query [b, h, q, d] and key [b, kv_heads, kv, d] come rotated at their cache indices; q_pos
        are the queries' indices; `inv_freq` turns them further (engines.attention.function.rotate);
        `kept` holds what this layer keeps between the calls of one run (one prompt)."""
        raise NotImplementedError

    def document_weighting(self, spec: MaskSpec) -> tuple[float, float] | None:
        """(temperature, scale) with which the question and answer read the documents (APE), or None."""
        return None


def segment_at(segments: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
    """Segment id of each index; indices past the prompt (generated tokens) are SUFFIX."""
    if segments is None:
        return torch.full_like(index, SUFFIX)
    inside = index < segments.shape[0]
    return torch.where(inside, segments[index.clamp(max=segments.shape[0] - 1)], torch.full_like(index, SUFFIX))


def visible(spec: MaskSpec, q: torch.Tensor, k: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys each query sees under `spec`: bool, broadcast of q [Q, 1] against k [1, K]."""
    kind = lookup("mask", spec.kind)
    if kind.needs_documents:
        return kind.visible(spec, q, k, segment_at(segments, q), segment_at(segments, k))
    return kind.visible(spec, q, k, None, None)


def segment_ids(prompt_tokens: int, spans: list[dict]) -> torch.Tensor:
    """Per-token segment ids from a probe's document spans (kinds document and gold)."""
    segments = torch.full((prompt_tokens,), SUFFIX, dtype=torch.long)
    documents = sorted((s for s in spans if s["kind"] in ("document", "gold")), key=lambda s: s["token_start"])
    if documents:
        segments[:documents[0]["token_start"]] = PREFIX
    for index, span in enumerate(documents):
        end = documents[index + 1]["token_start"] if index + 1 < len(documents) else span["token_end"]
        segments[span["token_start"]:end] = index
    return segments


def shared_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position ids where every document starts where the first one does; the rest follows the
    longest document."""
    positions = torch.arange(segments.shape[0])
    doc_ids = segments[segments >= 0].unique()
    if len(doc_ids) == 0:
        return positions
    start = int((segments >= 0).nonzero()[0])
    longest = 0
    for doc in doc_ids.tolist():
        where = (segments == doc).nonzero()[:, 0]
        positions[where] = start + torch.arange(len(where))
        longest = max(longest, len(where))
    after = (segments == SUFFIX).nonzero()[:, 0]
    after = after[after > start]
    positions[after] = start + longest + torch.arange(len(after))
    return positions
