"""LM-Infinite's Lambda-shaped mask (Han et al. 2023): global first keys plus a local window, with
the distance to the global keys capped at d_max."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.config.specs import MaskSpec
from engines.context.masks import MaskKind


@register
class LambdaShaped(MaskKind):
    name = "lambda"
    description = ("LM-Infinite: the last `n_local` keys with normal RoPE plus the first `n_global` keys at "
                   "distance d_max (distance=clamp: at min(d, d_max), as in the paper)")
    blockwise = True
    settings = (
        Setting("n_global", "int", 10, "how many first keys every query keeps seeing", 0),
        Setting("n_local", "int", None, "how many of the latest keys each query sees at their true distance; "
                "default the model's trained length (the paper's)", 1),
        Setting("d_max", "int", 0, "the distance the global keys are seen at; 0: n_local", 0),
        Setting("distance", "str", "fixed", "fixed: every global key at d_max (the released code); clamp: at "
                "min(d, d_max) (the paper)", choices=("fixed", "clamp")),
    )

    def resolved(self, spec, trained):
        if spec.get("n_local") is not None:
            return spec
        return MaskSpec(spec.kind, spec.params | {"n_local": trained})

    def visible(self, spec, q, k, seg_q, seg_k):
        return (k <= q) & ((k < spec.get("n_global")) | (q - k < spec.get("n_local")))

    def window(self, spec):
        return spec.get("n_local")

    def far_keys(self, spec):
        return spec.get("n_global")

    def far_rotation(self, spec, q_pos, k_pos, count, window):
        d_max = spec.get("d_max") or spec.get("n_local")
        if spec.get("distance") == "clamp":  # per (query, key): the distance min(q - k, d_max)
            return (d_max - (q_pos[:, None] - k_pos[None, :count])).clamp(max=0), None
        return d_max - q_pos, -k_pos[:count]  # global keys unrotated, the query at d_max
