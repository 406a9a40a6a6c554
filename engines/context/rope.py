"""RoPE scaling kinds: the frequency maths (pure, also used for plots) and switching a loaded
model's rotary embedding at runtime without reloading weights.

Notation as in ALGORITHMS.md: theta_i = b^(-2i/d), L = the trained context length, s = factor.
Kinds transformers implements (linear, dynamic, yarn, llama3, longrope) run through its own rotary
module; NTK-aware and Giraffe put the frequencies computed here into a default module.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from engines.config.specs import SpecError

KIND_PARAMS: dict[str, dict[str, float | None]] = {
    "default": {},
    "linear": {},
    "ntk": {},
    "dynamic": {},
    "yarn": {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": None},
    "llama3": {"low_freq_factor": 1.0, "high_freq_factor": 4.0},
    "longrope": {"short_factor": None, "long_factor": None},
    "giraffe": {"truncation": None},
}
TRANSFORMERS_KINDS = ("linear", "dynamic", "yarn", "llama3", "longrope")
MAX_FACTOR = 64.0


@dataclass(frozen=True)
class RopeSpec:
    """A RoPE setting: kind, factor s and the kind's own keys (defaults in KIND_PARAMS)."""

    kind: str = "default"
    factor: float = 1.0
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KIND_PARAMS:
            raise SpecError(f"Unknown RoPE kind '{self.kind}'. Known kinds: {', '.join(KIND_PARAMS)}.")
        if not isinstance(self.factor, (int, float)) or not 0 < self.factor <= MAX_FACTOR:
            raise SpecError(f"RoPE factor {self.factor} is out of range: give a number above 0 and at most "
                            f"{MAX_FACTOR:g}.")
        unknown = set(self.params) - set(KIND_PARAMS[self.kind])
        if unknown:
            allowed = ", ".join(KIND_PARAMS[self.kind]) or "none"
            raise SpecError(f"RoPE kind '{self.kind}' has no setting {', '.join(sorted(unknown))}; "
                            f"its settings: {allowed}.")

    def setting(self, key: str):
        value = self.params.get(key)
        return KIND_PARAMS[self.kind][key] if value is None else value

    def to_dict(self) -> dict:
        return {"kind": self.kind, "factor": self.factor, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict) -> "RopeSpec":
        return cls(data.get("kind", "default"), float(data.get("factor", 1.0)), dict(data.get("params", {})))

    @classmethod
    def parse(cls, text: str) -> "RopeSpec":
        """'yarn:2,beta_fast=16' -> RopeSpec('yarn', 2.0, {'beta_fast': 16.0})."""
        kind, _, rest = (text or "default").strip().partition(":")
        factor, params = 1.0, {}
        for i, item in enumerate(p.strip() for p in rest.split(",") if p.strip()):
            key, sep, value = item.partition("=")
            try:
                if not sep and i == 0:
                    factor = float(key)
                elif sep:
                    params[key.strip()] = [float(v) for v in value.split("/")] if "/" in value else float(value)
                else:
                    raise ValueError(item)
            except ValueError as exc:
                raise SpecError(f"Could not read '{item}' in --rope {text}: write KIND[:factor[,key=value...]], "
                                "e.g. yarn:2,beta_fast=32.") from exc
        return cls(kind.strip(), factor, params)


def default_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def frequencies(spec: RopeSpec, base: float, dim: int, trained: int,
                seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """theta' per frequency pair [dim/2] (float64) and the attention factor, for sequences of `seq_len`."""
    theta, s = default_inv_freq(base, dim), float(spec.factor)
    kind = spec.kind
    if kind == "default" or (kind == "dynamic" and (seq_len or 0) <= trained):
        return theta, 1.0
    if kind == "linear":
        return theta / s, 1.0
    if kind == "ntk":
        return default_inv_freq(base * s ** (dim / (dim - 2)), dim), 1.0
    if kind == "dynamic":
        grown = base * ((s * seq_len / trained) - (s - 1)) ** (dim / (dim - 2))
        return default_inv_freq(grown, dim), 1.0
    if kind == "yarn":
        def index(rotations: float) -> float:
            return dim * math.log(trained / (2 * math.pi * rotations)) / (2 * math.log(base))
        low = max(math.floor(index(spec.setting("beta_fast"))), 0)
        high = min(math.ceil(index(spec.setting("beta_slow"))), dim - 1)
        high = high + 0.001 if high == low else high
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        factor = spec.setting("attention_factor")
        return theta * (1 - ramp) + (theta / s) * ramp, factor if factor is not None else (
            0.1 * math.log(s) + 1 if s > 1 else 1.0)
    if kind == "llama3":
        low, high = spec.setting("low_freq_factor"), spec.setting("high_freq_factor")
        wavelength = 2 * math.pi / theta
        u = (trained / wavelength - low) / (high - low)
        mixed = (1 - u) * theta / s + u * theta
        scaled = torch.where(wavelength > trained / low, theta / s, mixed)
        return torch.where(wavelength < trained / high, theta, scaled), 1.0
    if kind == "longrope":
        short, long = longrope_factors(spec, dim)
        chosen = long if seq_len and seq_len > trained else short
        attention = math.sqrt(1 + math.log(s) / math.log(trained)) if s > 1 else 1.0
        return theta / torch.tensor(chosen, dtype=torch.float64), attention
    # giraffe: truncated basis
    cutoff = 2 * math.pi / (spec.setting("truncation") or s * trained)
    truncated = torch.where(theta >= cutoff / 8, torch.full_like(theta, cutoff / 16), torch.zeros_like(theta))
    return torch.where(theta >= cutoff, theta, truncated), 1.0


def longrope_factors(spec: RopeSpec, dim: int) -> tuple[list[float], list[float]]:
    """Per-pair (short, long) factors; by default short = 1 and long rises from 1 to s across pairs."""
    pairs = dim // 2
    short = spec.setting("short_factor") or [1.0] * pairs
    long = spec.setting("long_factor") or [1 + (spec.factor - 1) * i / (pairs - 1) for i in range(pairs)]
    if len(short) != pairs or len(long) != pairs:
        raise SpecError(f"LongRoPE needs {pairs} short and {pairs} long factors (one per frequency pair).")
    return list(map(float, short)), list(map(float, long))


def rope_parameters(spec: RopeSpec, base: float, trained: int, dim: int) -> dict:
    """transformers' rope_parameters for a kind it implements."""
    params = {"rope_type": spec.kind, "rope_theta": base, "factor": float(spec.factor),
              "original_max_position_embeddings": trained}
    if spec.kind == "yarn":
        params |= {"beta_fast": spec.setting("beta_fast"), "beta_slow": spec.setting("beta_slow")}
        if spec.setting("attention_factor") is not None:
            params["attention_factor"] = spec.setting("attention_factor")
    elif spec.kind == "llama3":
        params |= {"low_freq_factor": spec.setting("low_freq_factor"),
                   "high_freq_factor": spec.setting("high_freq_factor")}
    elif spec.kind == "longrope":
        params["short_factor"], params["long_factor"] = longrope_factors(spec, dim)
    return params


def rotary_for(original: torch.nn.Module, spec: RopeSpec) -> torch.nn.Module:
    """The rotary embedding module for `spec`, built beside the model's `original` one (which the
    default kind returns as it is)."""
    if spec.kind == "default":
        return original
    base = original.config.rope_parameters["rope_theta"]
    trained = original.original_max_seq_len
    dim = original.inv_freq.shape[0] * 2
    config = copy.deepcopy(original.config)
    if spec.kind in TRANSFORMERS_KINDS:
        config.rope_parameters = rope_parameters(spec, base, trained, dim)
    else:
        config.rope_parameters = {"rope_type": "default", "rope_theta": base}
    rotary = type(original)(config=config).to(original.inv_freq.device)
    if spec.kind not in TRANSFORMERS_KINDS:
        inv_freq, attention = frequencies(spec, base, dim, trained)
        rotary.inv_freq = inv_freq.float().to(original.inv_freq.device)
        rotary.original_inv_freq = rotary.inv_freq.clone()
        rotary.attention_scaling = attention
    return rotary
