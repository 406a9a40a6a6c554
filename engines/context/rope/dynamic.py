"""Dynamic NTK: the NTK base grown with the sequence length, only past the trained length."""
from __future__ import annotations

from engines.config.kinds import register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Dynamic(RopeKind):
    name = "dynamic"
    description = "dynamic NTK: unchanged within the trained length, then the base grows with the sequence"
    transformers_type = "dynamic"

    def frequencies(self, spec, base, dim, trained, seq_len):
        if (seq_len or 0) <= trained:
            return default_inv_freq(base, dim), 1.0
        s = spec.factor
        grown = base * ((s * seq_len / trained) - (s - 1)) ** (dim / (dim - 2))
        return default_inv_freq(grown, dim), 1.0
