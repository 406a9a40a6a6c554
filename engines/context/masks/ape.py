"""APE, adaptive parallel encoding (Yang et al. 2025, APE: Faster and Longer Context-Augmented Generation
via Adaptive Parallel Encoding): every document is encoded after the shared prefix at the same positions,
apart from the others (the `segments:shared_positions=1` mask), and the question and answer attend to them
re-weighted as the authors' code does: within the documents the scores are divided by `temperature`, and the
documents' share of attention is exp(scale x temperature x their log-sum-exp) against the prefix's and the
question's own exp(log-sum-exp)."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.context.masks import MaskKind
from engines.context.masks.segments import same_or_open


@register
class AdaptiveParallelEncoding(MaskKind):
    name = "ape"
    description = ("APE: documents encoded apart at shared positions; the question reads them with a temperature "
                   "and a scaling factor on their share of attention")
    needs_documents = True
    settings = (Setting("temperature", "float", 0.9, "divides the question's scores on document keys (< 1 sharpens)",
                        0.05, 10.0),
                Setting("scale", "float", 0.9, "multiplies (with the temperature) the documents' log-sum-exp",
                        0.05, 10.0))

    def visible(self, spec, q, k, seg_q, seg_k):
        return (k <= q) & same_or_open(seg_q, seg_k)

    def shares_positions(self, spec):
        return True

    def document_weighting(self, spec):
        return spec.get("temperature"), spec.get("scale")
