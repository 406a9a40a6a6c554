"""YaRN (Peng et al. 2023): NTK-by-parts interpolation with a ramp between beta_fast and beta_slow
rotations, and an attention temperature 0.1 ln s + 1."""
from __future__ import annotations

import math

import torch

from engines.config.kinds import Setting, register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Yarn(RopeKind):
    name = "yarn"
    description = "YaRN: pairs that rotate fast keep theta, slow ones are interpolated, with a ramp between"
    transformers_type = "yarn"
    settings = (
        Setting("beta_fast", "float", 32.0, "rotations over L above which a pair keeps its frequency", 0.0),
        Setting("beta_slow", "float", 1.0, "rotations over L below which a pair is fully interpolated", 0.0),
        Setting("attention_factor", "float", None, "attention temperature; default 0.1 ln s + 1", 0.0),
    )

    def frequencies(self, spec, base, dim, trained, seq_len):
        theta, s = default_inv_freq(base, dim), spec.factor

        def index(rotations: float) -> float:
            return dim * math.log(trained / (2 * math.pi * rotations)) / (2 * math.log(base))

        low = max(math.floor(index(spec.get("beta_fast"))), 0)
        high = min(math.ceil(index(spec.get("beta_slow"))), dim - 1)
        high = high + 0.001 if high == low else high
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        factor = spec.get("attention_factor")
        return theta * (1 - ramp) + (theta / s) * ramp, factor if factor is not None else (
            0.1 * math.log(s) + 1 if s > 1 else 1.0)

    def transformers_parameters(self, spec, dim):
        params = {"beta_fast": spec.get("beta_fast"), "beta_slow": spec.get("beta_slow")}
        if spec.get("attention_factor") is not None:
            params["attention_factor"] = spec.get("attention_factor")
        return params
