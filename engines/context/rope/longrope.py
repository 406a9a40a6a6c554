"""LongRoPE: a factor per frequency pair, short factors within L and long ones beyond it."""
from __future__ import annotations

import math

import torch

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.context.rope import RopeKind, default_inv_freq


def longrope_factors(spec, dim: int) -> tuple[list[float], list[float]]:
    """Per-pair (short, long) factors; by default short = 1 and long rises from 1 to s across pairs."""
    pairs = dim // 2
    short = spec.get("short_factor") or [1.0] * pairs
    long = spec.get("long_factor") or [1 + (spec.factor - 1) * i / (pairs - 1) for i in range(pairs)]
    if len(short) != pairs or len(long) != pairs:
        raise SpecError(f"LongRoPE needs {pairs} short and {pairs} long factors (one per frequency pair).")
    return list(map(float, short)), list(map(float, long))


@register
class LongRope(RopeKind):
    name = "longrope"
    description = "LongRoPE: theta divided by a factor per pair (short within L, long beyond it)"
    transformers_type = "longrope"
    settings = (
        Setting("short_factor", "floats", None, "one factor per pair within L, written a/b/c; default all 1", 0.0),
        Setting("long_factor", "floats", None, "one factor per pair beyond L; default rising from 1 to s", 0.0),
    )

    def frequencies(self, spec, base, dim, trained, seq_len):
        short, long = longrope_factors(spec, dim)
        chosen = long if seq_len and seq_len > trained else short
        s = spec.factor
        attention = math.sqrt(1 + math.log(s) / math.log(trained)) if s > 1 else 1.0
        return default_inv_freq(base, dim) / torch.tensor(chosen, dtype=torch.float64), attention

    def transformers_parameters(self, spec, dim):
        short, long = longrope_factors(spec, dim)
        return {"short_factor": short, "long_factor": long}
