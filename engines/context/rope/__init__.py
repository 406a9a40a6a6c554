"""RoPE scaling kinds: the frequency maths (pure, also used for plots) and the rotary module a run uses.

Notation as in ALGORITHMS.md: theta_i = b^(-2i/d), L = the trained context length, s = factor. Each
kind is a `RopeKind` in its own module here. Kinds transformers implements (linear, dynamic, yarn,
llama3, longrope) run through its own rotary module; the others put their frequencies into a default
module.
"""
from __future__ import annotations

import copy
from typing import ClassVar

import torch

from engines.config.kinds import Kind, lookup
from engines.config.specs import RopeSpec


class RopeKind(Kind):
    """A RoPE kind: its frequencies theta' per pair, and transformers' rope_type when it has one."""

    family: ClassVar[str] = "rope"
    transformers_type: ClassVar[str | None] = None

    def frequencies(self, spec: RopeSpec, base: float, dim: int, trained: int,
                    seq_len: int | None) -> tuple[torch.Tensor, float]:
        """theta' per frequency pair [dim/2] (float64) and the attention factor, for sequences of `seq_len`."""
        raise NotImplementedError

    def transformers_parameters(self, spec: RopeSpec, dim: int) -> dict:
        """The kind's own entries of transformers' rope_parameters (beyond type, theta, factor and L)."""
        return {}


def default_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def frequencies(spec: RopeSpec, base: float, dim: int, trained: int,
                seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """theta' per frequency pair [dim/2] (float64) and the attention factor, for sequences of `seq_len`."""
    return lookup("rope", spec.kind).frequencies(spec, base, dim, trained, seq_len)


def rope_parameters(spec: RopeSpec, base: float, trained: int, dim: int) -> dict:
    """transformers' rope_parameters for a kind it implements."""
    kind = lookup("rope", spec.kind)
    return {"rope_type": kind.transformers_type, "rope_theta": base, "factor": float(spec.factor),
            "original_max_position_embeddings": trained} | kind.transformers_parameters(spec, dim)


def rotary_for(original: torch.nn.Module, spec: RopeSpec) -> torch.nn.Module:
    """The rotary embedding module for `spec`, built beside the model's `original` one (which the
    default kind returns as it is)."""
    if spec.kind == "default":
        return original
    kind = lookup("rope", spec.kind)
    base = original.config.rope_parameters["rope_theta"]
    trained = original.original_max_seq_len
    dim = original.inv_freq.shape[0] * 2
    config = copy.deepcopy(original.config)
    if kind.transformers_type:
        config.rope_parameters = rope_parameters(spec, base, trained, dim)
    else:
        config.rope_parameters = {"rope_type": "default", "rope_theta": base}
    rotary = type(original)(config=config).to(original.inv_freq.device)
    if not kind.transformers_type:
        inv_freq, attention = kind.frequencies(spec, base, dim, trained, None)
        rotary.inv_freq = inv_freq.float().to(original.inv_freq.device)
        rotary.original_inv_freq = rotary.inv_freq.clone()
        rotary.attention_scaling = attention
    return rotary
