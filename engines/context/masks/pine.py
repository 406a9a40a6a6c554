"""A mask variant of PINE (Wang et al. 2024): documents see each other both ways at shared positions.
What it lacks against the paper (the `pine_full` kind): every document starts at the same positions, so a
document sees the others at its own and later positions (distances RoPE never met in training) and the
question sees them all piled on one span, where PINE gives each a place of its own, earlier than the reader,
ordered per layer and head by the reader's attention to it."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.context.masks import MaskKind
from engines.context.masks.segments import same_or_open


@register
class Pine(MaskKind):
    name = "pine"
    description = ("PINE mask variant: documents see each other both ways (causal within a document), all at "
                   "the same positions; pine_full adds the paper's per-layer, per-head ordering by importance")
    needs_documents = True
    looks_ahead = True
    settings = (Setting("shared_positions", "int", 1, "1: every document starts at the same position", 0, 1),)

    def visible(self, spec, q, k, seg_q, seg_k):
        return documents_both_ways(q, k, seg_q, seg_k)


def documents_both_ways(q, k, seg_q, seg_k):
    """Causal, and a document sees every other document, earlier or later; the prefix sees only itself."""
    documents = (seg_q >= 0) & (seg_k >= 0) & (seg_q != seg_k)
    return ((k <= q) & same_or_open(seg_q, seg_k)) | documents
