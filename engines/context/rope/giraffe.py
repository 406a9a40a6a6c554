"""Giraffe's truncated basis (Pal et al. 2023): frequencies below a cutoff set to a small constant or to 0."""
from __future__ import annotations

import math

import torch

from engines.config.kinds import Setting, register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Giraffe(RopeKind):
    name = "giraffe"
    description = ("truncated basis: frequencies above the cutoff kept, a band set to cutoff/16, the rest to 0; "
                   "scale=1 also divides them by s as the released code does (the lab's default: scale=0)")
    settings = (
        Setting("truncation", "float", None, "the wavelength cutoff in tokens; default s x L", 1.0),
        Setting("scale", "int", 0, "1: divide the truncated frequencies by s (the released code's "
                "interpolation); 0: truncation alone", 0, 1),
    )

    def frequencies(self, spec, base, dim, trained, seq_len):
        theta = default_inv_freq(base, dim)
        cutoff = 2 * math.pi / (spec.get("truncation") or spec.factor * trained)
        truncated = torch.where(theta >= cutoff / 8, torch.full_like(theta, cutoff / 16), torch.zeros_like(theta))
        kept = torch.where(theta >= cutoff, theta, truncated)
        return (kept / spec.factor if spec.get("scale") else kept), 1.0
