"""Llama 3.1's scaling: low frequencies divided by s, high ones kept, a smooth mix between."""
from __future__ import annotations

import math

import torch

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.context.rope import RopeKind, default_inv_freq


@register
class Llama3(RopeKind):
    name = "llama3"
    description = "Llama 3.1: wavelengths beyond L/low_freq_factor interpolated, below L/high_freq_factor kept"
    transformers_type = "llama3"
    settings = (
        Setting("low_freq_factor", "float", 1.0, "L / this is the wavelength above which pairs are divided by s", 0.0),
        Setting("high_freq_factor", "float", 4.0, "L / this is the wavelength below which pairs are kept", 0.0),
    )

    def frequencies(self, spec, base, dim, trained, seq_len):
        theta, s = default_inv_freq(base, dim), spec.factor
        low, high = spec.get("low_freq_factor"), spec.get("high_freq_factor")
        wavelength = 2 * math.pi / theta
        u = (trained / wavelength - low) / (high - low)
        mixed = (1 - u) * theta / s + u * theta
        scaled = torch.where(wavelength > trained / low, theta / s, mixed)
        return torch.where(wavelength < trained / high, theta, scaled), 1.0

    def transformers_parameters(self, spec, dim):
        return {"low_freq_factor": spec.get("low_freq_factor"), "high_freq_factor": spec.get("high_freq_factor")}

    def check(self, values):
        if not 0 < values["low_freq_factor"] < values["high_freq_factor"]:
            raise SpecError("Llama 3 scaling needs 0 < low_freq_factor < high_freq_factor (defaults 1 and 4).")
