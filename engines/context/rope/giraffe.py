"""Giraffe's truncated basis (Pal et al. 2023): frequencies below a cutoff set to a small constant or to 0."""
from __future__ import annotations

import math

import torch

from engines.config.kinds import Setting, register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Giraffe(RopeKind):
    name = "giraffe"
    description = "truncated basis: frequencies above the cutoff kept, a band set to cutoff/16, the rest to 0"
    settings = (
        Setting("truncation", "float", None, "the wavelength cutoff in tokens; default s x L", 1.0),
    )

    def frequencies(self, spec, base, dim, trained, seq_len):
        theta = default_inv_freq(base, dim)
        cutoff = 2 * math.pi / (spec.get("truncation") or spec.factor * trained)
        truncated = torch.where(theta >= cutoff / 8, torch.full_like(theta, cutoff / 16), torch.zeros_like(theta))
        return torch.where(theta >= cutoff, theta, truncated), 1.0
