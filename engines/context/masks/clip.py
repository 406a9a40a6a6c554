"""ReRoPE (Su 2023, "Rectified Rotary Position Embeddings"): every key stays visible, but relative
distances are capped: a key further back than `distance` is seen as if exactly `distance` away, so no
query meets a distance it was not trained on. Computed block by block like the window masks: keys
within the distance at their true rotation, the rest with the query turned to `distance` and the keys
turned back to position 0, merged by log-sum-exp (no dense float mask)."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.config.specs import MaskSpec
from engines.context.masks import MaskKind

EVERY_KEY = 2**62


@register
class Clipped(MaskKind):
    name = "clip"
    description = ("ReRoPE: every key visible, relative distances capped at `distance` (keys further back are "
                   "seen at exactly that distance)")
    blockwise = True
    settings = (Setting("distance", "int", None, "the largest relative distance a query meets; default the model's "
                        "trained length", 1),)

    def resolved(self, spec, trained):
        if spec.get("distance") is not None:
            return spec
        return MaskSpec(spec.kind, spec.params | {"distance": trained})

    def visible(self, spec, q, k, seg_q, seg_k):
        return k <= q

    def window(self, spec):
        return spec.get("distance")

    def far_keys(self, spec):
        return EVERY_KEY

    def far_rotation(self, spec, q_pos, k_pos, count, window):
        return spec.get("distance") - q_pos, -k_pos[:count]  # keys back at 0, the query at the cap
