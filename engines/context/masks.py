"""Attention masks as pure functions of (query index, key index, segment ids).

`visible(spec, q, k, segments)` takes broadcastable index tensors (queries [Q, 1], keys [1, K]) and
returns which keys each query may see. Segment ids mark the prompt's parts: -1 the prefix before the
documents, 0..n-1 the documents, -2 the rest (question, answer, generated tokens).

PINE is built here as a position-invariant *mask* variant: documents see each other both ways
(causal within a document) and, with shared positions, all start at the same position; the
per-head importance re-ordering of the paper is not built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engines.config.specs import SpecError

PREFIX, SUFFIX = -1, -2
KIND_PARAMS: dict[str, dict[str, int]] = {
    "causal": {},
    "sliding_window": {"window": 1024},
    "sinks": {"n_sink": 4, "window": 1024, "reindex": 0},
    "lambda": {"n_global": 10, "n_local": 2048, "d_max": 0},  # d_max 0: the same as n_local
    "segments": {"shared_positions": 0},
    "pine": {"shared_positions": 1},
}
NEEDS_DOCUMENTS = ("segments", "pine")
DESCRIPTIONS = {
    "causal": "plain causal attention (the fused kernel)",
    "sliding_window": "each query sees the last `window` keys",
    "sinks": "the first `n_sink` keys plus the last `window`; reindex=1 measures distances to the sinks "
             "as if the cache held only sinks + window (StreamingLLM)",
    "lambda": "LM-Infinite: the last `n_local` keys with normal RoPE plus the first `n_global` keys at "
              "distance d_max",
    "segments": "documents cannot see each other; prefix and question see all; shared_positions=1 starts "
                "every document at the same position (parallel context encoding)",
    "pine": "PINE mask variant: documents see each other both ways (causal within a document), all at the "
            "same positions; the paper's per-head importance re-ordering is not built",
}


@dataclass(frozen=True)
class MaskSpec:
    kind: str = "causal"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KIND_PARAMS:
            raise SpecError(f"Unknown mask kind '{self.kind}'. Known kinds: {', '.join(KIND_PARAMS)}.")
        unknown = set(self.params) - set(KIND_PARAMS[self.kind])
        if unknown:
            allowed = ", ".join(KIND_PARAMS[self.kind]) or "none"
            raise SpecError(f"Mask kind '{self.kind}' has no setting {', '.join(sorted(unknown))}; "
                            f"its settings: {allowed}.")
        for key, value in self.params.items():
            if not isinstance(value, int) or value < 0:
                raise SpecError(f"Mask setting {key}={value} must be a whole number, 0 or more.")
        if self.kind in ("sliding_window", "sinks") and self.get("window") < 1:
            raise SpecError("The window must be at least 1 token.")
        if self.kind == "sinks" and self.get("window") <= self.get("n_sink"):
            raise SpecError(f"The window ({self.get('window')}) must be larger than the sink count "
                            f"({self.get('n_sink')}); raise the window or lower n_sink.")
        if self.kind == "lambda" and self.get("n_local") < 1:
            raise SpecError("n_local must be at least 1 token.")

    def get(self, key: str) -> int:
        return int(self.params.get(key, KIND_PARAMS[self.kind][key]))

    @property
    def shares_positions(self) -> bool:
        return self.kind in NEEDS_DOCUMENTS and bool(self.get("shared_positions"))

    @property
    def looks_ahead(self) -> bool:
        """Earlier tokens see later ones: a cached prefix cannot be reused across prompts."""
        return self.kind == "pine"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict) -> "MaskSpec":
        return cls(data.get("kind", "causal"), dict(data.get("params", {})))

    @classmethod
    def parse(cls, text: str) -> "MaskSpec":
        """'sinks:n_sink=4,window=1024' -> MaskSpec('sinks', {'n_sink': 4, 'window': 1024})."""
        kind, _, rest = (text or "causal").strip().partition(":")
        params = {}
        for item in (p.strip() for p in rest.split(",") if p.strip()):
            key, sep, value = item.partition("=")
            try:
                params[key.strip()] = int(value) if sep else int("x")
            except ValueError as exc:
                raise SpecError(f"Could not read '{item}' in --mask {text}: write KIND[:key=value,...] with "
                                "whole numbers, e.g. sinks:n_sink=4,window=1024.") from exc
        return cls(kind.strip(), params)


def segment_at(segments: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
    """Segment id of each index; indices past the prompt (generated tokens) are SUFFIX."""
    if segments is None:
        return torch.full_like(index, SUFFIX)
    inside = index < segments.shape[0]
    return torch.where(inside, segments[index.clamp(max=segments.shape[0] - 1)], torch.full_like(index, SUFFIX))


def visible(spec: MaskSpec, q: torch.Tensor, k: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys each query sees: bool, broadcast of q [Q, 1] against k [1, K]."""
    causal = k <= q
    kind = spec.kind
    if kind == "causal":
        return causal
    if kind == "sliding_window":
        return causal & (q - k < spec.get("window"))
    if kind == "sinks":
        return causal & ((k < spec.get("n_sink")) | (q - k < spec.get("window")))
    if kind == "lambda":
        return causal & ((k < spec.get("n_global")) | (q - k < spec.get("n_local")))
    seg_q, seg_k = segment_at(segments, q), segment_at(segments, k)
    same_or_open = (seg_q == seg_k) | (seg_k == PREFIX) | (seg_q == SUFFIX)
    if kind == "segments":
        return causal & same_or_open
    documents = (seg_q >= 0) & (seg_k >= 0) & (seg_q != seg_k)
    return (causal & same_or_open) | documents  # pine: other documents both ways


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
