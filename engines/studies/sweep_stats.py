"""Numbers drawn from a finished (or partial) sweep grid: pure functions of plain cell dicts.

A cell dict has at least length, depth, seed, correct and score.
"""
from __future__ import annotations

import math
from collections import defaultdict

MIDDLE_DEPTHS = (25.0, 75.0)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def grid(cells: list[dict], value: str = "correct") -> dict[tuple[int, float], dict]:
    """(length, depth) -> mean of `value` over seeds, with the count and its Wilson interval."""
    groups: dict[tuple[int, float], list[float]] = defaultdict(list)
    for cell in cells:
        if cell.get(value) is not None:  # e.g. no needle attention for a cell without a needle
            groups[(int(cell["length"]), float(cell["depth"]))].append(float(cell[value]))
    out = {}
    for key, values in groups.items():
        hits = sum(1 for v in values if v >= 1.0) if value == "correct" else 0
        low, high = wilson_interval(hits, len(values)) if value == "correct" else (min(values), max(values))
        out[key] = {"mean": sum(values) / len(values), "n": len(values), "low": low, "high": high}
    return out


def by_depth(cells: list[dict], length: int | None = None, value: str = "correct") -> dict[float, float]:
    """Mean `value` per depth, over one length or all lengths."""
    groups: dict[float, list[float]] = defaultdict(list)
    for cell in cells:
        if length is None or int(cell["length"]) == length:
            groups[float(cell["depth"])].append(float(cell[value]))
    return {depth: sum(v) / len(v) for depth, v in sorted(groups.items())}


def by_length(cells: list[dict], value: str = "correct") -> dict[int, float]:
    groups: dict[int, list[float]] = defaultdict(list)
    for cell in cells:
        groups[int(cell["length"])].append(float(cell[value]))
    return {length: sum(v) / len(v) for length, v in sorted(groups.items())}


def u_curve_indices(accuracy_by_depth: dict[float, float]) -> dict[str, float | None]:
    """Primacy = accuracy at the shallowest depth minus the mean over the middle depths (25-75%);
    recency = accuracy at the deepest depth minus that mean. Positive values are the U shape.
    """
    depths = sorted(accuracy_by_depth)
    middle = [d for d in depths if MIDDLE_DEPTHS[0] <= d <= MIDDLE_DEPTHS[1]] or depths[1:-1]
    if len(depths) < 3 or not middle:
        return {"primacy": None, "recency": None, "middle_mean": None}
    middle_mean = sum(accuracy_by_depth[d] for d in middle) / len(middle)
    return {"primacy": accuracy_by_depth[depths[0]] - middle_mean,
            "recency": accuracy_by_depth[depths[-1]] - middle_mean, "middle_mean": middle_mean}


def effective_length(score_by_length: dict[int, float], threshold: float | None = None,
                     relative: float = 0.85) -> dict:
    """RULER's effective length: the longest length whose score is at or above the threshold (a
    shorter length may fall below it). Also `first_failure_length`: the longest length before the
    first length below the threshold. A score equal to the threshold passes (0 passes a threshold of 0).

    Without a fixed `threshold` it is `relative` times the score at the shortest length (a small
    model's own short-context score); the result says which rule was used.
    """
    lengths = sorted(score_by_length)
    if not lengths:
        return {"effective_length": None, "threshold": None, "rule": "no cells yet"}
    if threshold is None:
        threshold = relative * score_by_length[lengths[0]]
        rule = f"{relative:.0%} of the score at the shortest length ({lengths[0]} tokens)"
    else:
        rule = f"fixed threshold {threshold:g}"
    passing = [length for length in lengths if score_by_length[length] >= threshold]
    failing = [length for length in lengths if score_by_length[length] < threshold]
    before_failure = [length for length in passing if not failing or length < failing[0]]
    return {"effective_length": max(passing, default=None), "threshold": threshold, "rule": rule,
            "length_rule": "RULER: the longest length whose score is at or above the threshold",
            "first_failure_length": max(before_failure, default=None)}
