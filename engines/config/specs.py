"""Frozen, serialisable specs shared by engines, components and storage.

A `RunConfig` is everything that shapes a run (model, quantization, dtype, chat template,
generation budget); it is passed whole to the engines and logged whole with every run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engines.config.errors import SpecError

EMBEDDED_MODEL = "smollm2-135m-instruct"
QUANTS = ("none", "8bit", "4bit")
DTYPES = ("auto", "bf16", "fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
QUANT_4BIT_TYPES = ("nf4", "fp4")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SpecError(f"Unknown {name} '{value}'. Choose one of: {', '.join(allowed)}.")
    return value


def _from_dict(cls, data: dict[str, Any]):
    if not isinstance(data, dict):
        raise SpecError(f"{cls.__name__} must be given as an object, not {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise SpecError(f"Unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}.")
    return cls(**data)


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load and how: `model` is the embedded id, a Hub id or a local path."""

    model: str = EMBEDDED_MODEL
    quant: str = "none"
    quant_4bit_type: str = "nf4"
    double_quant: bool = True
    dtype: str = "auto"
    device: str = "auto"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise SpecError("Give a model: the embedded id, a Hugging Face Hub id or a local directory.")
        _choice("quantization", self.quant, QUANTS)
        _choice("4-bit type", self.quant_4bit_type, QUANT_4BIT_TYPES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("device", self.device, DEVICES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class RunConfig:
    """The one configuration every tab shares: model, RoPE, mask, decoding method, and how the prompt is fed."""

    model: ModelSpec = field(default_factory=ModelSpec)
    chat_template: bool = True
    max_new_tokens: int = 32
    rope: Any = None  # engines.context.rope.RopeSpec; None means the model's own RoPE
    mask: Any = None  # engines.context.masks.MaskSpec; None means plain causal
    decoding: Any = None  # engines.decoding.methods.DecodingSpec; None means greedy

    def __post_init__(self):
        from engines.context.masks import MaskSpec
        from engines.context.rope import RopeSpec
        from engines.decoding.methods import DecodingSpec

        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise SpecError("Max new tokens must be a whole number from 1 to 4096.")
        object.__setattr__(self, "rope", self.rope or RopeSpec())
        object.__setattr__(self, "mask", self.mask or MaskSpec())
        object.__setattr__(self, "decoding", self.decoding or DecodingSpec())

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "chat_template": self.chat_template,
                "max_new_tokens": self.max_new_tokens, "rope": self.rope.to_dict(), "mask": self.mask.to_dict(),
                "decoding": self.decoding.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        from engines.context.masks import MaskSpec
        from engines.context.rope import RopeSpec
        from engines.decoding.methods import DecodingSpec

        data = dict(data)
        data["model"] = ModelSpec.from_dict(data.get("model", {}))
        data["rope"] = RopeSpec.from_dict(data.get("rope") or {})
        data["mask"] = MaskSpec.from_dict(data.get("mask") or {})
        data["decoding"] = DecodingSpec.from_dict(data.get("decoding") or {})
        return _from_dict(cls, data)
