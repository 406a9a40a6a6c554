"""Attention sinks (StreamingLLM, Xiao et al. 2023): the first keys plus a sliding window."""
from __future__ import annotations

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.context.masks import MaskKind


@register
class Sinks(MaskKind):
    name = "sinks"
    description = ("the first `n_sink` keys plus the last `window`; reindex=1 measures distances to the sinks "
                   "as if the cache held only sinks + window (StreamingLLM)")
    blockwise = True
    settings = (
        Setting("n_sink", "int", 4, "how many first keys every query keeps seeing", 0),
        Setting("window", "int", 1024, "how many of the latest keys each query sees", 1),
        Setting("reindex", "int", 0, "1: the sinks sit just before the window, as in a rolling cache", 0, 1),
    )

    def check(self, values):
        if values["window"] <= values["n_sink"]:
            raise SpecError(f"The window ({values['window']}) must be larger than the sink count "
                            f"({values['n_sink']}); raise the window or lower n_sink.")

    def visible(self, spec, q, k, seg_q, seg_k):
        return (k <= q) & ((k < spec.get("n_sink")) | (q - k < spec.get("window")))

    def window(self, spec):
        return spec.get("window")

    def far_keys(self, spec):
        return spec.get("n_sink")

    def far_rotation(self, spec, q_pos, k_pos, count, window):
        if not spec.get("reindex"):
            return None, None  # sinks at their true distance
        return q_pos.clamp(max=count + window - 1) - q_pos, None  # the query sits at n_sink + window - 1
