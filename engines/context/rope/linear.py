"""Position interpolation (Chen et al. 2023): every frequency divided by s."""
from __future__ import annotations

from engines.config.kinds import register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Linear(RopeKind):
    name = "linear"
    description = "position interpolation: positions divided by the factor (theta' = theta / s)"
    transformers_type = "linear"

    def frequencies(self, spec, base, dim, trained, seq_len):
        return default_inv_freq(base, dim) / spec.factor, 1.0
