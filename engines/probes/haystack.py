"""Haystack sources and the assembly of a context sized to a target length in the model's tokens.

A haystack is a run of filler units (sentences, JSON pairs, documents) from a source, with pieces
(needles, distractors, the gold document) placed between units at a depth: the boundary at or
before depth% of the filler's tokens, so a needle never splits a sentence.
"""
from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engines.config.errors import HaystackError
from engines.config.kinds import lookup
from engines.config.paths import ASSETS

UPLOAD_MAX_BYTES = 5 * 2**20
UPLOAD_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Piece:
    """Something placed in the haystack: kind is needle, distractor, document or gold."""

    text: str
    kind: str
    depth: float = 0.0
    label: str = ""
    index: int | None = None  # place after this many units instead of at a depth (documents)


@dataclass(frozen=True)
class Span:
    """Where a placed piece ended up: characters in the prompt, then tokens once measured."""

    kind: str
    label: str
    start: int
    end: int

    def shifted(self, offset: int) -> "Span":
        return Span(self.kind, self.label, self.start + offset, self.end + offset)


@dataclass(frozen=True)
class Source:
    """How units of one haystack source are joined: JSON objects and numbered documents differ."""

    name: str
    units: Callable[[random.Random], Iterator[str]]
    separator: str = " "
    opening: str = ""
    closing: str = ""
    numbered: bool = False  # documents: render "Document [n]" in final order


def split_sentences(text: str) -> list[str]:
    """Sentences: split at . ! or ? followed by white space."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def sentences_of(text: str) -> list[str]:
    """The sentences of prose fit for a haystack: 20 to 400 characters."""
    return [s for s in split_sentences(text) if 20 <= len(s) <= 400]


@lru_cache(maxsize=1)
def prose_sentences() -> tuple[str, ...]:
    """Sentences of the Python reference documentation (pydoc_data) and the essays in assets/."""
    import pydoc_data.topics

    paragraphs = []
    for name in sorted(pydoc_data.topics.topics):
        for block in pydoc_data.topics.topics[name].split("\n\n"):
            lines = block.splitlines()
            # keep plain prose paragraphs: no indented code, no *** or === underlines, no grammar
            if lines and not any(line.startswith(" ") or set(line.strip()) <= set("*=-^") for line in lines):
                paragraphs.append(" ".join(line.strip() for line in lines))
    for essay in sorted((ASSETS / "essays").glob("*.txt")):
        paragraphs.extend(essay.read_text().split("\n\n")[1:])
    sentences = tuple(s for p in paragraphs for s in sentences_of(" ".join(p.split()))
                      if sum(ch.isalpha() for ch in s) > 0.7 * len(s))
    return sentences


def cycle_from(items: tuple[str, ...], rng: random.Random) -> Iterator[str]:
    start = rng.randrange(len(items))
    while True:
        for i in range(len(items)):
            yield items[(start + i) % len(items)]


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def kv_pair(key: str, value: str) -> str:
    return f"{json.dumps(key)}: {json.dumps(value)}"


@lru_cache(maxsize=1)
def multidoc_set() -> dict:
    return json.loads((ASSETS / "multidoc.json").read_text())


def document(title: str, text: str) -> str:
    """A document as the lost-in-the-middle prompt shows it, after its "Document [n]" label."""
    return f"(Title: {title}) {text}"


def source(name: str, upload_text: str | None = None) -> Source:
    """The haystack source `name` (a registered kind of the "source" family; 'upload' needs the text)."""
    return lookup("source", name).source(upload_text)


def read_upload(path: str | Path) -> str:
    """The text of an uploaded haystack file, checked for type, size and content."""
    path = Path(path)
    if path.suffix.lower() not in UPLOAD_SUFFIXES:
        raise HaystackError(f"'{path.name}' is not a .txt or .md file; upload plain text or Markdown.")
    size = path.stat().st_size
    if size == 0:
        raise HaystackError(f"'{path.name}' is empty; upload a file with some text in it.")
    if size > UPLOAD_MAX_BYTES:
        raise HaystackError(f"'{path.name}' is {size / 2**20:.1f} MB; upload at most {UPLOAD_MAX_BYTES // 2**20} MB.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text.strip() or "\x00" in text:
        raise HaystackError(f"'{path.name}' does not look like UTF-8 text (binary or empty); upload plain text.")
    return text


def render(src: Source, fillers: list[str], pieces: list[Piece], filler_tokens: list[int],
           arrange: Callable[[list[str]], list[int]] | None = None) -> tuple[str, list[Span]]:
    """Join fillers with pieces placed at their depths, then put in the order `arrange` gives (indices
    into the units' texts), if any; returns the text and the pieces' spans."""
    total = sum(filler_tokens)
    cumulative, running = [0], 0
    for count in filler_tokens:
        running += count
        cumulative.append(running)
    slots: dict[int, list[Piece]] = {}
    for piece in pieces:  # boundary k = after k fillers, the last one at or before the depth
        if piece.index is not None:
            k = min(piece.index, len(fillers))
        else:
            k = max(i for i, c in enumerate(cumulative) if c <= piece.depth / 100 * total + 1e-9)
        slots.setdefault(k, []).append(piece)
    items: list[tuple[str, Piece | None]] = []
    for k in range(len(fillers) + 1):
        items.extend((p.text, p) for p in slots.get(k, []))
        if k < len(fillers):
            items.append((fillers[k], None))
    if arrange is not None:
        items = [items[i] for i in arrange([unit for unit, _ in items])]
    text, spans = src.opening, []
    for index, (unit, piece) in enumerate(items):
        if index:
            text += src.separator
        if src.numbered:
            text += f"Document [{index + 1}]"
        start = len(text)
        text += unit
        if piece is not None:
            label = piece.label or (f"Document [{index + 1}]" if src.numbered else piece.kind)
            spans.append(Span(piece.kind, label, start, len(text)))
        elif src.numbered:  # every document's place, for segment masks and per-document plots
            spans.append(Span("document", f"Document [{index + 1}]", start - len(f"Document [{index + 1}]"),
                              len(text)))
    return text + src.closing, spans


def largest_fitting(fits: Callable[[int], bool], smallest: int) -> int:
    """The largest size >= `smallest` for which `fits` holds, `fits` growing false with the size (doubling,
    then bisection); `fits(smallest)` must hold."""
    low, high = smallest, smallest * 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
