"""Scorers for probe answers, registered by name (the "scorer" family); each returns a `Score` in [0, 1].

A scorer is a function (answer, references, question) -> Score decorated with `@scorer` in a module of
this package; its name is the function's and its description the first line of its docstring.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from engines.config.kinds import Kind, lookup, register


@dataclass(frozen=True)
class Score:
    score: float
    correct: bool
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"score": self.score, "correct": self.correct, "details": self.details}


class Scorer(Kind):
    family: ClassVar[str] = "scorer"

    def __init__(self, function: Callable[[str, tuple[str, ...], str], Score]):
        self.name = function.__name__
        self.description = (function.__doc__ or "").strip().splitlines()[0]
        self.function = function


def scorer(function: Callable[[str, tuple[str, ...], str], Score]) -> Callable:
    register(Scorer(function))
    return function


def score(name: str, answer: str, refs: tuple[str, ...] | list[str], question: str = "") -> Score:
    """Score `answer` against the references; `question` is the probe's question as asked."""
    return lookup("scorer", name).function(answer or "", tuple(refs), question)
