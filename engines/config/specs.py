"""Frozen, serialisable specs shared by engines, the UI, the CLI and storage (no torch here).

A `RunConfig` is everything that shapes a run (model, quantization, dtype, chat template, generation
budget, RoPE kind, attention mask, decoding method); it is passed whole to the engines and logged whole
with every run. RoPE, mask and decoding each name a registered kind (engines/config/kinds.py) with its
settings, written `KIND[:key=value,...]`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engines.config.errors import SpecError
from engines.config.kinds import Kind, Setting, lookup, parse_kind

EMBEDDED_MODEL = "smollm2-135m-instruct"
SECOND_EMBEDDED_MODEL = "gemma3-270m"  # a base model with a 32K window, local and global layers
EMBEDDED_MODELS = (EMBEDDED_MODEL, SECOND_EMBEDDED_MODEL)
QUANTS = ("none", "8bit", "4bit")
DTYPES = ("auto", "bf16", "fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
KNOB_LIMIT = 10  # the context-sensitivity knob: at most this many times the direction, either way
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


class KindSpec:
    """What the specs of a kind share (RopeSpec adds its factor and layer type): a registered kind and
    its typed settings (only those given are stored, so a logged setting reads as the user wrote it),
    written 'KIND[:key=value,...]' and logged as {name_field: KIND, "params": {...}}."""

    family: ClassVar[str]
    name_field: ClassVar[str] = "kind"
    default: ClassVar[str]

    def __post_init__(self):
        self._check()

    @property
    def label(self) -> str:
        return self._label()

    def to_dict(self) -> dict:
        return {self.name_field: self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict):
        return cls(data.get(cls.name_field, cls.default), dict(data.get("params", {})))

    @classmethod
    def parse(cls, text: str | None):
        return cls(*parse_kind(text, cls.family, cls.default))

    @property
    def name(self) -> str:
        return getattr(self, self.name_field)

    @property
    def entry(self) -> Kind:
        return lookup(self.family, self.name)

    def _check(self) -> None:
        object.__setattr__(self, "params", self.entry.typed(self.params))

    def get(self, key: str) -> Any:
        """The setting's value: as given, else the kind's default."""
        return self.params[key] if key in self.params else self.entry.setting(key).default

    def _label(self, lead: str = "") -> str:
        shown = [lead] if lead else []
        for key, value in self.params.items():
            text = "/".join(map(_number, value)) if isinstance(value, list) else (
                _number(value) if isinstance(value, float) else value)
            shown.append(f"{key}={text}")
        return self.name + (":" + ",".join(shown) if shown else "")


def _number(value: float) -> str:
    """A float as a setting is written back: whole numbers without '.0', the rest exactly (repr)."""
    return str(int(value)) if value.is_integer() else repr(value)


FACTOR = Setting("factor", "float", 1.0, "the scale s: how many times the trained length to reach", 0.0, 64.0)
LAYER_TYPE = Setting("layer_type", "str", "all", "on a model with its own RoPE per layer type (Gemma 3): the "
                     "layers that take the kind, all, global (full attention) or local (sliding window)",
                     choices=("all", "global", "local"))


@dataclass(frozen=True)
class RopeSpec(KindSpec):
    """A RoPE setting: kind, factor s, the kind's own settings and, on models with a RoPE per layer type,
    the layer type it applies to ('yarn:2,beta_fast=16,layer_type=global')."""

    family: ClassVar[str] = "rope"
    default: ClassVar[str] = "default"
    kind: str = "default"
    factor: float = 1.0
    params: dict = field(default_factory=dict)
    layer_type: str = "all"

    def __post_init__(self):
        factor = FACTOR.read(self.factor, "RoPE")
        if factor <= 0:
            raise SpecError(f"RoPE factor {self.factor} is out of range: give a number above 0 and at most 64.")
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "layer_type", LAYER_TYPE.read(self.layer_type, "RoPE"))
        self._check()

    @property
    def label(self) -> str:
        label = self._label(_number(self.factor) if self.factor != 1 else "")
        if self.layer_type == "all":
            return label
        return label + ("," if ":" in label else ":") + f"layer_type={self.layer_type}"

    def to_dict(self) -> dict:
        """Without `layer_type` when it is all, so records written before it existed read the same."""
        typed = {} if self.layer_type == "all" else {"layer_type": self.layer_type}
        return {"kind": self.kind, "factor": self.factor, "params": dict(self.params)} | typed

    @classmethod
    def from_dict(cls, data: dict) -> RopeSpec:
        return cls(data.get("kind", "default"), data.get("factor", 1.0), dict(data.get("params", {})),
                   data.get("layer_type", "all"))

    @classmethod
    def parse(cls, text: str | None) -> RopeSpec:
        kind, params = parse_kind(text, "rope", "default", lead="factor")
        return cls(kind, params.pop("factor", 1.0), params, params.pop("layer_type", "all"))


@dataclass(frozen=True)
class MaskSpec(KindSpec):
    """An attention mask: kind and settings ('sinks:n_sink=4,window=1024')."""

    family: ClassVar[str] = "mask"
    default: ClassVar[str] = "causal"
    kind: str = "causal"
    params: dict = field(default_factory=dict)

    @property
    def shares_positions(self) -> bool:
        return self.entry.shares_positions(self)

    @property
    def looks_ahead(self) -> bool:
        """Earlier tokens see later ones: a cached prefix cannot be reused across prompts."""
        return self.entry.looks_ahead


@dataclass(frozen=True)
class TransformSpec(KindSpec):
    """A context transform applied before the prompt is formatted ('jrt:times=3', 'sandwich')."""

    family: ClassVar[str] = "transform"
    default: ClassVar[str] = "none"
    kind: str = "none"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DecodingSpec(KindSpec):
    """A decoding method and its settings ('beam:num_beams=4')."""

    family: ClassVar[str] = "decoding"
    name_field: ClassVar[str] = "method"
    default: ClassVar[str] = "greedy"
    method: str = "greedy"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """The one configuration every tab shares: model, RoPE, mask, decoding method, and how the prompt is fed."""

    model: ModelSpec = field(default_factory=ModelSpec)
    chat_template: bool = True
    max_new_tokens: int = 32
    rope: RopeSpec | None = None  # None: the model's own RoPE
    mask: MaskSpec | None = None  # None: plain causal
    decoding: DecodingSpec | None = None  # None: greedy
    transform: TransformSpec | None = None  # None: the context as built
    knob: float = 0.0  # the context-sensitivity knob (engines/studies/knob.py); 0: off

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise SpecError("Max new tokens must be a whole number from 1 to 4096.")
        knob = self.knob
        if isinstance(knob, bool) or not isinstance(knob, (int, float)) or not -KNOB_LIMIT <= knob <= KNOB_LIMIT:
            raise SpecError(f"The knob must be a number from -{KNOB_LIMIT} to {KNOB_LIMIT} (0: off).")
        object.__setattr__(self, "knob", float(self.knob))
        object.__setattr__(self, "rope", self.rope or RopeSpec())
        object.__setattr__(self, "mask", self.mask or MaskSpec())
        object.__setattr__(self, "decoding", self.decoding or DecodingSpec())
        object.__setattr__(self, "transform", self.transform or TransformSpec())

    def to_dict(self) -> dict[str, Any]:
        """Without `transform` and `knob` when they are off, so records written before they existed read the same."""
        transform = {} if self.transform.kind == "none" else {"transform": self.transform.to_dict()}
        knob = {"knob": self.knob} if self.knob else {}
        return {"model": self.model.to_dict(), "chat_template": self.chat_template,
                "max_new_tokens": self.max_new_tokens, "rope": self.rope.to_dict(), "mask": self.mask.to_dict(),
                "decoding": self.decoding.to_dict()} | transform | knob

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        data["model"] = ModelSpec.from_dict(data.get("model", {}))
        data["rope"] = RopeSpec.from_dict(data.get("rope") or {})
        data["mask"] = MaskSpec.from_dict(data.get("mask") or {})
        data["decoding"] = DecodingSpec.from_dict(data.get("decoding") or {})
        data["transform"] = TransformSpec.from_dict(data.get("transform") or {})
        return _from_dict(cls, data)
