"""NTK-aware scaling: the base grows to b * s^(d/(d-2)), so high frequencies barely move."""
from __future__ import annotations

from engines.config.kinds import register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Ntk(RopeKind):
    name = "ntk"
    description = "NTK-aware: the base raised to b * s^(d/(d-2)), stretching low frequencies most"

    def frequencies(self, spec, base, dim, trained, seq_len):
        return default_inv_freq(base * spec.factor ** (dim / (dim - 2)), dim), 1.0
