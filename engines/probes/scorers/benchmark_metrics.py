"""Metrics of benchmarks reproduced from their released code (engines/probes/benchmarks/)."""
from __future__ import annotations

import json
import re

from engines.probes.scorers import Score, scorer


@scorer
def first_number(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Landmark passkey: the first number in the answer equals the key."""
    found = re.search(r"\d+", answer)
    first = found.group() if found else ""
    return Score(float(first == refs[0]), first == refs[0], {"first_number": first})


def penguin_counts(answer: str, stars: int) -> list[int]:
    """The answer's {"little_penguin": [...]} list, cut to `stars` and deduplicated (as viz.ipynb does); an
    answer that is not JSON gives the numbers of its first [...] list."""
    text = answer.replace("```", "").replace("json", "").strip()
    try:
        values = json.loads(text[text.index("{"):text.rindex("}") + 1])["little_penguin"]
    except (ValueError, KeyError, TypeError):
        listed = re.search(r"\[([^\]]*)\]", text)
        values = [int(n) for n in re.findall(r"-?\d+", listed.group(1))] if listed else []
    if not isinstance(values, list):
        return []
    return list({v for v in values[:stars] if isinstance(v, int)})


@scorer
def counting_stars_searching(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Counting-Stars searching: the share of the true counts the answer's list holds."""
    counts = penguin_counts(answer, len(refs))
    hits = [int(ref) in counts for ref in refs]
    share = sum(hits) / len(refs)
    return Score(round(share, 6), share == 1.0, {"found": hits, "counts": counts})


@scorer
def counting_stars_reasoning(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Counting-Stars reasoning: per star 1 for the true count alone, 0.5 with the wrong one, 0.25 for the
    wrong one alone (references are "true/wrong")."""
    counts = penguin_counts(answer, len(refs))
    points = []
    for ref in refs:
        true, wrong = (int(n) for n in ref.split("/"))
        points.append({(True, False): 1.0, (True, True): 0.5, (False, True): 0.25}.get(
            (true in counts, wrong in counts), 0.0))
    share = sum(points) / len(refs)
    return Score(round(share, 6), share == 1.0, {"points": points, "counts": counts})


@scorer
def value_prefix(answer: str, refs: tuple[str, ...], question: str = "") -> Score:
    """Needle Threading: the answer (trimmed of spaces and quotes) begins with the value."""
    hit = answer.strip().strip("\"'")[:len(refs[0])] == refs[0]
    return Score(float(hit), hit, {})
