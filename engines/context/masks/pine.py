"""A mask variant of PINE (Wang et al. 2024): documents see each other both ways at shared positions.
The paper's per-head re-ordering of documents by attention importance is not built here."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.context.masks import MaskKind
from engines.context.masks.segments import same_or_open


@register
class Pine(MaskKind):
    name = "pine"
    description = ("PINE mask variant: documents see each other both ways (causal within a document), all at "
                   "the same positions; the paper's per-head importance re-ordering is not built")
    needs_documents = True
    looks_ahead = True
    settings = (Setting("shared_positions", "int", 1, "1: every document starts at the same position", 0, 1),)

    def visible(self, spec, q, k, seg_q, seg_k):
        documents = (seg_q >= 0) & (seg_k >= 0) & (seg_q != seg_k)
        return ((k <= q) & same_or_open(seg_q, seg_k)) | documents
