"""Segment isolation: documents cannot see each other (parallel context encoding with shared positions)."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.context.masks import PREFIX, SUFFIX, MaskKind


def same_or_open(seg_q, seg_k):
    """Within one segment, keys of the prefix, and everything for the question and answer."""
    return (seg_q == seg_k) | (seg_k == PREFIX) | (seg_q == SUFFIX)


@register
class Segments(MaskKind):
    name = "segments"
    description = ("documents cannot see each other; prefix and question see all; shared_positions=1 starts "
                   "every document at the same position (parallel context encoding)")
    needs_documents = True
    settings = (Setting("shared_positions", "int", 0, "1: every document starts at the same position", 0, 1),)

    def visible(self, spec, q, k, seg_q, seg_k):
        return (k <= q) & same_or_open(seg_q, seg_k)
