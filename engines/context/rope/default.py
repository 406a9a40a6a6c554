"""The model's own RoPE: theta_i = b^(-2i/d), unchanged."""
from __future__ import annotations

from engines.config.kinds import register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Default(RopeKind):
    name = "default"
    description = "the model's own rotary embedding, unchanged"

    def frequencies(self, spec, base, dim, trained, seq_len):
        return default_inv_freq(base, dim), 1.0
