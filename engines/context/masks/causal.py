"""Plain causal attention: the fused kernel, no mask built."""
from __future__ import annotations

from engines.config.kinds import register
from engines.context.masks import MaskKind


@register
class Causal(MaskKind):
    name = "causal"
    description = "plain causal attention (the fused kernel)"

    def visible(self, spec, q, k, seg_q, seg_k):
        return k <= q
