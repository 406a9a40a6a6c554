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

from engines.config.errors import SpecError
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

    def unrotated(self, spec: RopeSpec, layers: int) -> list[int]:
        """Layers (of `layers`) whose queries and keys are left unrotated (NoPE); none for most kinds."""
        return []


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


LAYER_TYPES = {"all": ("full_attention", "sliding_attention"), "global": ("full_attention",),
               "local": ("sliding_attention",)}


def frequency_sets(rotary: torch.nn.Module) -> dict[str | None, tuple[torch.Tensor, dict]]:
    """The rotary module's frequencies and rope_parameters per layer type: one set keyed None for most
    models, one per layer type for models that rotate local and global layers differently (Gemma 3)."""
    types = getattr(rotary, "layer_types", None)
    if types is None:
        return {None: (rotary.inv_freq, rotary.config.rope_parameters)}
    return {t: (getattr(rotary, f"{t}_inv_freq"), rotary.config.rope_parameters[t]) for t in types}


def rope_geometry(rotary: torch.nn.Module) -> tuple[float, int, int, str]:
    """Base, rotated dimension, trained length and which layers they describe, for the pictures: on a
    model with a RoPE per layer type, its global layers' (the ones that reach far)."""
    sets = frequency_sets(rotary)
    layer_type = "full_attention" if "full_attention" in sets else next(iter(sets))
    inv_freq, params = sets[layer_type]
    return params["rope_theta"], inv_freq.shape[0] * 2, rotary.original_max_seq_len, (
        "global layers" if layer_type else "every layer")


def layer_inv_freq(rotary: torch.nn.Module, layer_type: str | None) -> torch.Tensor:
    """The live frequencies that rotate a layer of `layer_type` (dynamic RoPE swaps them past L)."""
    sets = frequency_sets(rotary)
    return sets[layer_type if layer_type in sets else None][0]


def rotary_for(original: torch.nn.Module, spec: RopeSpec) -> torch.nn.Module:
    """The rotary embedding module for `spec`, built beside the model's `original` one (which the
    default kind returns as it is). On a model with a RoPE per layer type, `spec.layer_type` chooses the
    types that take the kind; the others keep theirs."""
    sets = frequency_sets(original)
    if None in sets and spec.layer_type != "all":
        raise SpecError(f"RoPE layer_type={spec.layer_type} needs a model with its own RoPE per layer type (such as Gemma 3); "
                        "this model rotates every layer alike, so leave layer_type out.")
    if spec.kind == "default":
        return original
    kind = lookup("rope", spec.kind)
    trained = original.original_max_seq_len
    chosen = [t for t in sets if t is None or t in LAYER_TYPES[spec.layer_type]]
    config = copy.deepcopy(original.config)
    for layer_type in chosen:
        inv_freq, params = sets[layer_type]
        base, dim = params["rope_theta"], inv_freq.shape[0] * 2
        new = rope_parameters(spec, base, trained, dim) if kind.transformers_type else {
            "rope_type": "default", "rope_theta": base}
        if layer_type is None:
            config.rope_parameters = new
        else:
            config.rope_parameters[layer_type] = new
    device = next(iter(sets.values()))[0].device
    rotary = type(original)(config=config).to(device)
    if not kind.transformers_type:
        for layer_type in chosen:
            inv_freq, params = sets[layer_type]
            scaled, attention = kind.frequencies(spec, params["rope_theta"], inv_freq.shape[0] * 2, trained, None)
            prefix = f"{layer_type}_" if layer_type else ""
            setattr(rotary, f"{prefix}inv_freq", scaled.float().to(device))
            setattr(rotary, f"{prefix}original_inv_freq", scaled.float().to(device))
            setattr(rotary, f"{prefix}attention_scaling", attention)
    rotary.unrotated_layers = frozenset(kind.unrotated(spec, original.config.num_hidden_layers))
    return rotary
