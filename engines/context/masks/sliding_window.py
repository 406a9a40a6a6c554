"""A sliding window: each query sees only the latest `window` keys."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.context.masks import MaskKind


@register
class SlidingWindow(MaskKind):
    name = "sliding_window"
    description = "each query sees the last `window` keys"
    blockwise = True
    settings = (Setting("window", "int", 1024, "how many of the latest keys each query sees", 1),)

    def visible(self, spec, q, k, seg_q, seg_k):
        return (k <= q) & (q - k < spec.get("window"))

    def window(self, spec):
        return spec.get("window")
