"""The lab's scorers: deterministic, case-insensitive string metrics (none uses a model as judge)."""
from __future__ import annotations

import re
import string
from collections import Counter

from engines.probes.scorers import Score, scorer

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _found(answer: str, refs: tuple[str, ...]) -> list[bool]:
    lowered = answer.lower()
    return [ref.lower() in lowered for ref in refs]


def _share(hits: list[bool], details: dict | None = None) -> Score:
    share = sum(hits) / len(hits) if hits else 0.0
    return Score(round(share, 6), share == 1.0, details or {"found": hits})


@scorer
def exact(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """The answer, trimmed of spaces, quotes and a final full stop, equals a reference."""
    cleaned = answer.strip().strip("\"'`").rstrip(".").strip().lower()
    return _share([any(cleaned == ref.strip().lower() for ref in refs)])


@scorer
def substring(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Any reference appears in the answer."""
    return _share([any(_found(answer, refs))])


@scorer
def string_match_all(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """RULER: the share of references that appear in the answer."""
    return _share(_found(answer, refs))


@scorer
def string_match_part(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """RULER's QA metric: 1 when any reference appears."""
    return _share([any(_found(answer, refs))])


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


@scorer
def best_subspan_em(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Lost-in-the-middle QA: a normalised reference is a substring of the normalised first line."""
    lines = answer.strip().splitlines()
    first = normalize_answer(lines[0] if lines else "")
    return _share([any(normalize_answer(ref) and normalize_answer(ref) in first for ref in refs)])


@scorer
def uuid_prefix(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Needle threading: the first UUID in the reply equals the expected one.

    UUIDs the question itself gives (the asked key, echoed by chat models) are not answers.
    """
    asked = {u.lower() for u in UUID_RE.findall(question)}
    first = next((u.lower() for u in UUID_RE.findall(answer) if u.lower() not in asked), "")
    return _share([first == refs[0].lower()], {"first_uuid": first})


def _values(answer: str, refs: tuple[str, ...]) -> list[str]:
    pattern = UUID_RE if refs and all(UUID_RE.fullmatch(r) for r in refs) else NUMBER_RE
    return [v.lower() for v in pattern.findall(answer)]


@scorer
def multi_value_recall(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """The share of expected values (UUIDs or numbers, with multiplicity) the reply lists.

    `details.in_position` says, per expected value, whether the reply has it at the same place
    in its list (the counting-stars position curve).
    """
    values = _values(answer, refs)
    wanted = Counter(ref.lower() for ref in refs)
    hits = sum(min(count, values.count(value)) for value, count in wanted.items())
    in_position = [i < len(values) and values[i] == ref.lower() for i, ref in enumerate(refs)]
    share = hits / len(refs) if refs else 0.0
    return Score(round(share, 6), share == 1.0, {"values": values, "in_position": in_position})


@scorer
def chain_progress(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Threading: `refs` are the values along a chain; the score is how far along the reply got.

    1.0 only when the final value is given; an intermediate hop earns its share of the chain.
    """
    found = _found(answer, refs)
    reached = max((i + 1 for i, hit in enumerate(found) if hit), default=0)
    return Score(round(reached / len(refs), 6), bool(found and found[-1]), {"reached_hop": reached})
