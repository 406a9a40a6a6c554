"""The context engine: put a RoPE kind and an attention mask on a loaded model for one run.

The mask rides on the model's config (`config.lab_context`), where the lab's attention function and
mask builder (engines/attention.py) read it; the plain causal mask leaves the fused path in use.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engines.context.masks import NEEDS_DOCUMENTS, MaskSpec, segment_ids, shared_positions, visible
from engines.context.rope import RopeSpec, apply_rope
from engines.probes.haystack import HaystackError


@dataclass(frozen=True)
class ContextRule:
    """What the attention function needs: the mask, its visibility rule and the RoPE frequencies."""

    mask: MaskSpec
    visibility: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    inv_freq: torch.Tensor
    two_branch: bool


def configure(model, rope: RopeSpec, mask: MaskSpec, spans: list[dict] | None = None,
              prompt_tokens: int = 0) -> torch.Tensor | None:
    """Apply `rope` and `mask` to `model` for the next run; returns custom position ids for the
    prompt when the mask shares positions between documents (else None)."""
    apply_rope(model, rope)
    if mask.kind == "causal":
        model.config.lab_context = None
        return None
    segments = None
    if mask.kind in NEEDS_DOCUMENTS:
        segments = segment_ids(prompt_tokens, spans or [])
        if not bool((segments >= 0).any()):
            raise HaystackError(f"The '{mask.kind}' mask needs a prompt made of documents: use a multi-document "
                                "task such as litm_qa in the Haystack or Sweep tab.")
    two_branch = mask.kind in ("sliding_window", "sinks", "lambda")
    rule = None if two_branch else (lambda q, k: visible(mask, q, k, segments.to(q.device) if segments is not None
                                                          else None))
    model.config.lab_context = ContextRule(mask, rule, model.model.rotary_emb.inv_freq, bool(two_branch))
    return shared_positions(segments) if mask.shares_positions else None


def mask_grid(mask: MaskSpec, length: int, spans: list[dict] | None = None, points: int = 128) -> tuple[list, list]:
    """The mask sampled on a points x points grid of positions (a downsampled picture)."""
    positions = torch.linspace(0, length - 1, min(points, length)).round().long()
    segments = segment_ids(length, spans) if mask.kind in NEEDS_DOCUMENTS and spans else None
    rows = visible(mask, positions[:, None], positions[None, :], segments)
    return rows.tolist(), positions.tolist()


def rope_curves(rope: RopeSpec, base: float, dim: int, trained: int) -> dict[str, list[float]]:
    """Per-pair ratio and wavelength, and RoFormer's long-term decay bound
    (1/(d/2)) sum_j |sum_{k<j} exp(i m theta_k)| against distance m, for one RoPE setting."""
    from engines.context.rope import default_inv_freq, frequencies

    theta = default_inv_freq(base, dim)
    scaled, _ = frequencies(rope, base, dim, trained, seq_len=int(trained * max(rope.factor, 1)) + 1)
    distance = torch.unique(torch.logspace(0, torch.log10(torch.tensor(4.0 * trained)), 200).round())
    phases = distance[:, None] * scaled[None, :]
    partial = torch.cumsum(torch.complex(torch.cos(phases), torch.sin(phases)), dim=1).abs()
    decay = partial.mean(dim=1) / partial.mean(dim=1)[0]
    return {"pair": list(range(len(theta))), "ratio": (scaled / theta).clamp(min=1e-12).tolist(),
            "wavelength": (2 * torch.pi / scaled.clamp(min=1e-12)).tolist(), "distance": distance.tolist(),
            "decay": decay.tolist()}


@torch.inference_mode()
def token_nll(model, ids: torch.Tensor, rope: RopeSpec, mask: MaskSpec, chunk: int = 256) -> list[float]:
    """Negative log-likelihood of every token of `ids` [1, n] given the ones before, under a setting.
    The vocabulary projection runs in chunks, so full logits are never held at once."""
    configure(model, rope, mask)
    try:
        hidden = model.model(input_ids=ids).last_hidden_state[0, :-1]  # position p predicts token p + 1
    finally:
        configure(model, RopeSpec(), MaskSpec())
    targets = ids[0, 1:]
    losses = []
    for start in range(0, len(targets), chunk):
        logits = model.lm_head(hidden[start:start + chunk]).float()
        step = torch.nn.functional.cross_entropy(logits, targets[start:start + chunk], reduction="none")
        losses.extend(step.tolist())
    return losses
