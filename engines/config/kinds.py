"""One registry for every kind the lab can be asked for: RoPE kinds, mask kinds, decoding methods, task
presets, haystack sources and scorers.

A kind declares its name, a one-line description and its settings (type, default, range, meaning);
validation, the UI's help text, the CLI's help and the error "Unknown X 'y'. Available: ..." all come
from that declaration. Each family lives in one package; a new kind is one new module in that package
whose class is decorated with `@register` (the package's modules are imported when the family is
first asked for). No torch here: a family's package is imported only when it is used.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

from engines.config.errors import HaystackError, LabError, SpecError

TYPES = ("int", "float", "str", "floats")


@dataclass(frozen=True)
class Setting:
    """One setting of a kind. `default` None means the kind works it out (the meaning says how);
    `low`/`high` bound numbers (inclusive); `choices` lists the allowed words of a str setting."""

    name: str
    type: str
    default: Any
    meaning: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def read(self, value: Any, owner: str, error: type[LabError] = SpecError) -> Any:
        """`value` (a typed value or the text the user wrote) as this setting's type, checked."""
        if value is None and self.default is None:
            return None
        try:
            typed = _convert(self.type, value)
        except (TypeError, ValueError, OverflowError):
            kind = {"int": "a whole number", "float": "a finite number", "str": "text",
                    "floats": "numbers separated by /"}[self.type]
            raise error(f"{owner}: {self.name}={value!r} must be {kind}.") from None
        for number in (typed if isinstance(typed, list) else [typed]):
            if isinstance(number, str):
                continue
            if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
                raise error(f"{owner}: {self.name}={value} is out of range; give {self.range_text()}.")
        if self.choices and typed not in self.choices:
            raise error(f"{owner}: {self.name}={value!r} is not one of {', '.join(self.choices)}.")
        return typed

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"{self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{self.low:g} or more"
        if self.high is not None:
            return f"at most {self.high:g}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "range": self.range_text(),
                "meaning": self.meaning}


def _convert(kind: str, value: Any) -> Any:
    if isinstance(value, bool):
        value = int(value)
    if kind == "str":
        if not isinstance(value, (str, int, float)):
            raise TypeError(value)
        return str(value).strip()
    if kind == "floats":
        items = value if isinstance(value, (list, tuple)) else str(value).split("/")
        return [_convert("float", item) for item in items]
    if isinstance(value, str):
        value = value.strip()
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    if kind == "int":
        if number != int(number):
            raise ValueError(value)
        return int(number)
    return number


class Kind:
    """The base of every registered kind: subclasses set the class attributes and may add `check`."""

    family: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    settings: ClassVar[tuple[Setting, ...]] = ()

    @property
    def owner(self) -> str:
        return f"{FAMILIES[self.family].label.capitalize()} '{self.name}'"

    def setting(self, key: str) -> Setting:
        return next(s for s in self.settings if s.name == key)

    def defaults(self) -> dict[str, Any]:
        return {s.name: s.default for s in self.settings}

    def typed(self, params: dict[str, Any]) -> dict[str, Any]:
        """The given settings, each read as its declared type and range; unknown names are refused."""
        error = FAMILIES[self.family].error
        if not isinstance(params, dict):
            raise error(f"{self.owner}: settings must be given as key=value pairs.")
        known = {s.name for s in self.settings}
        unknown = sorted(str(key) for key in params if key not in known)
        if unknown:
            raise error(f"{self.owner} has no setting {', '.join(unknown)}; its settings: "
                        f"{', '.join(s.name for s in self.settings) or 'none'}.")
        typed = {key: self.setting(key).read(value, self.owner, error) for key, value in params.items()}
        self.check(self.defaults() | typed)
        return typed

    def check(self, values: dict[str, Any]) -> None:
        """Rules between settings, on the full set (defaults filled in); raise the family's error."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "settings": [s.to_dict() for s in self.settings]}


@dataclass(frozen=True)
class Family:
    key: str
    label: str  # "RoPE kind": used in messages
    home: str  # the package whose modules register this family's kinds
    error: type[LabError] = SpecError
    first: str = ""  # the default kind, listed first (the others in the order their modules load)


FAMILIES = {f.key: f for f in (
    Family("rope", "RoPE kind", "engines.context.rope", first="default"),
    Family("mask", "mask kind", "engines.context.masks", first="causal"),
    Family("decoding", "decoding method", "engines.decoding.methods", first="greedy"),
    Family("transform", "context transform", "engines.context.transforms", first="none"),
    Family("task", "task", "engines.probes.tasks", HaystackError),
    Family("source", "haystack", "engines.probes.sources", HaystackError),
    Family("scorer", "scorer", "engines.probes.scorers"),
)}
_ENTRIES: dict[str, dict[str, Kind]] = {key: {} for key in FAMILIES}
_LOADED: set[str] = set()


def register(kind):
    """Class decorator (or call with an instance): add the kind to its family's registry."""
    entry = kind() if isinstance(kind, type) else kind
    if entry.family not in FAMILIES or not entry.name:
        raise ValueError(f"{kind!r} needs a known family ({', '.join(FAMILIES)}) and a name.")
    _ENTRIES[entry.family][entry.name] = entry
    return kind


def entries(family: str) -> dict[str, Kind]:
    """Every registered kind of `family`, importing the family's package on first use."""
    if family not in _LOADED:
        package = importlib.import_module(FAMILIES[family].home)
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            importlib.import_module(f"{package.__name__}.{module.name}")
        first = FAMILIES[family].first
        if first in _ENTRIES[family]:
            _ENTRIES[family] = {first: _ENTRIES[family][first]} | _ENTRIES[family]
        _LOADED.add(family)
    return _ENTRIES[family]


def lookup(family: str, name: Any) -> Kind:
    known = entries(family)
    if not isinstance(name, str) or name not in known:
        raise FAMILIES[family].error(f"Unknown {FAMILIES[family].label} '{name}'. Available: {', '.join(known)}.")
    return known[name]


def parse_kind(text: str | None, family: str, default: str, lead: str | None = None) -> tuple[str, dict[str, str]]:
    """'KIND[:key=value,...]' -> (kind, {key: text}); the values are read by the kind's settings.

    With `lead`, a first item without '=' is the value of that setting ('yarn:2' -> factor 2)."""
    name, _, rest = (text if isinstance(text, str) and text.strip() else default).strip().partition(":")
    params: dict[str, str] = {}
    for index, item in enumerate(part.strip() for part in rest.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        if not sep and index == 0 and lead:
            key, value = lead, key
        elif not sep or not key.strip():
            example = f"{name.strip() or default}:{lead + '_value' if lead else 'key'}=..."
            raise FAMILIES[family].error(f"Could not read '{item}' in '{text}': write KIND[:key=value,...], "
                                         f"e.g. {example}.")
        params[key.strip()] = value.strip()
    return name.strip(), params


def catalogue() -> dict[str, list[dict[str, Any]]]:
    """Every family with every kind's description and settings (`python app.py kinds`)."""
    return {family: [kind.to_dict() for kind in entries(family).values()] for family in FAMILIES}
