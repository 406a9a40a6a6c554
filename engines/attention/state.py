"""What one run asks of the lab's attention function: the mask rule, the capture and the masked heads.

A `RunState` is put on the model's config by `engines.context.run.run_state` for exactly one run and
taken off again when the run ends; outside a run the attention function is plain sdpa.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class MaskRule:
    """The mask in use: its spec and kind, the bool visibility function (for kinds that are not run
    blockwise), the rotary module whose live frequencies re-rotate far keys, and the segment ids."""

    spec: Any  # engines.config.specs.MaskSpec
    kind: Any  # engines.context.masks.MaskKind
    visibility: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    rotary: torch.nn.Module
    segments: torch.Tensor | None = None  # the prompt's segment ids, for kinds that need documents
    kept: dict = field(default_factory=dict, compare=False)  # what a kind keeps between calls of one run, per layer

    def inv_freq(self, module: torch.nn.Module) -> torch.Tensor:
        """The frequencies of the attention `module`'s layer, read at call time: dynamic RoPE swaps them
        once a sequence passes the trained length, and Gemma 3 rotates local and global layers apart."""
        from engines.context.rope import layer_inv_freq

        types = getattr(module.config, "layer_types", None)
        inv_freq = layer_inv_freq(self.rotary, types[module.layer_idx] if types else None)
        if module.layer_idx in getattr(self.rotary, "unrotated_layers", ()):
            return torch.zeros_like(inv_freq)  # a NoPE layer: moving a key turns nothing
        return inv_freq


@dataclass(frozen=True)
class RunState:
    rule: MaskRule | None = None
    capture: Any = None  # AttentionCapture or HeadMapCapture
    head_mask: dict[int, list[int]] = field(default_factory=dict)
    original_rotary: torch.nn.Module | None = None


def current(config) -> RunState:
    """The state of the run in progress on the model with this config (an empty one between runs)."""
    return getattr(config, "lab_run", None) or RunState()
