"""Sweep numbers on table-driven grids: Wilson intervals, U-curve indices, effective length, depth grids."""
import math
import tracemalloc

import pytest

from engines.config.policy import PRIVATE
from engines.probes.haystack import HaystackError
from engines.studies.sweep_stats import by_depth, effective_length, grid, u_curve_indices, wilson_interval
from engines.studies.sweeps import SweepSpec, depth_grid
from services.sweep_jobs import parse_list
from ui import figures


def test_wilson_interval_matches_the_textbook_formula():
    low, high = wilson_interval(8, 10)
    # z = 1.96: centre (0.8 + 1.9208/10) / 1.38416, half-width 1.96*sqrt(0.016 + 0.0096040)/1.38416
    z = 1.96
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("curve, primacy, recency", [
    ({0: 1.0, 25: 0.5, 50: 0.25, 75: 0.5, 100: 1.0}, 1.0 - 5 / 12, 1.0 - 5 / 12),  # a U
    ({0: 0.0, 25: 1.0, 50: 1.0, 75: 1.0, 100: 0.0}, -1.0, -1.0),                    # an inverted U
    ({0: 1.0, 50: 0.5, 100: 0.0}, 0.5, -0.5),                                       # primacy only
])
def test_u_curve_indices(curve, primacy, recency):
    indices = u_curve_indices(curve)
    assert indices["primacy"] == pytest.approx(primacy) and indices["recency"] == pytest.approx(recency)


def test_u_curve_needs_three_depths():
    assert u_curve_indices({0: 1.0, 100: 0.0})["primacy"] is None


@pytest.mark.parametrize("scores, threshold, ruler, before_failure", [
    ({1000: 1.0, 2000: 0.9, 4000: 0.86, 8000: 0.5}, None, 4000, 4000),   # 85% of 1.0
    ({1000: 1.0, 2000: 0.8, 4000: 0.9, 8000: 0.9}, None, 8000, 1000),    # RULER: a dip does not end it
    ({1000: 0.6, 2000: 0.55, 4000: 0.2}, None, 2000, 2000),              # relative to a weak short score
    ({1000: 0.6, 2000: 0.55, 4000: 0.2}, 0.856, None, None),             # a fixed 85.6 never met
    ({1000: 0.9, 2000: 0.9, 4000: 0.9}, 0.85, 4000, 4000),
    ({1000: 0.85, 2000: 0.84}, 0.85, 1000, 1000),                       # equal to the threshold passes
    ({1000: 0.0, 2000: 0.0}, None, 2000, 2000),                          # 0 passes a threshold of 0
])
def test_effective_length(scores, threshold, ruler, before_failure):
    """Against RULER's rule written out: the largest length L with score(L) >= threshold."""
    result = effective_length(scores, threshold)
    limit = threshold if threshold is not None else 0.85 * scores[min(scores)]
    assert result["effective_length"] == ruler == max((n for n, s in scores.items() if s >= limit), default=None)
    assert result["first_failure_length"] == before_failure
    assert ("fixed" in result["rule"]) == (threshold is not None) and "RULER" in result["length_rule"]


def test_grid_means_over_seeds_with_intervals():
    rows = [{"length": 1000, "depth": 50.0, "seed": s, "correct": c, "score": float(c)} for s, c in
            [(1, True), (2, True), (3, False), (4, True)]]
    cell = grid(rows)[(1000, 50.0)]
    assert cell["mean"] == 0.75 and cell["n"] == 4 and cell["low"] < 0.75 < cell["high"]
    assert by_depth(rows) == {50.0: 0.75}


def test_depth_grids():
    assert depth_grid(11) == tuple(float(d) for d in range(0, 101, 10))
    sigmoid = depth_grid(11, "sigmoid")
    assert sigmoid[0] == 0 and sigmoid[-1] == 100 and sigmoid[5] == 50
    assert sigmoid[1] - sigmoid[0] < sigmoid[5] - sigmoid[4]  # denser near the ends
    with pytest.raises(HaystackError, match="Unknown depth spacing"):
        depth_grid(5, "log")


@pytest.mark.parametrize("kwargs, words", [
    ({"lengths": ()}, "Give one or more lengths"),
    ({"depths": (0, 120)}, "between 0 and 100"),
    ({"seeds": ()}, "whole-number seeds"),
    ({"mode": "judge"}, "Unknown scoring mode"),
    ({"task": "nope"}, "Unknown task 'nope'"),
    ({"lengths": tuple(range(1000, 1100)), "depths": tuple(range(30))}, "holds here .2000 cells"),
])
def test_bad_sweep_settings(kwargs, words):
    args = {"task": "passkey", "lengths": (1000,), "depths": (0, 50)} | kwargs
    with pytest.raises(HaystackError, match=words):
        SweepSpec(**args)


def test_sweep_spec_round_trip():
    spec = SweepSpec("vt", (500, 1000), (0.0, 50.0), (1, 2), "logprob", "prose", {"num_hops": 3})
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    assert [c.key for c in spec.cells()][:2] == ["500:0:1", "500:0:2"]


def test_heatmap_leaves_unfinished_cells_blank_and_difference_is_b_minus_a():
    rows_a = [{"length": 1000, "depth": 0.0, "correct": True, "score": 1.0}]
    rows_b = [{"length": 1000, "depth": 0.0, "correct": False, "score": 0.0}]
    heat = figures.sweep_heatmap(rows_a, (1000, 2000), (0.0, 50.0))
    assert [list(r) for r in heat.data[0].z] == [[1.0, None], [None, None]]
    assert "n=1" in heat.data[0].text[0][0]
    assert [list(r) for r in figures.difference_heatmap(rows_a, rows_b, (1000,), (0.0,)).data[0].z] == [[-1.0]]
    curve = figures.length_curve(rows_a + [{"length": 2000, "depth": 0.0, "correct": False, "score": 0.0}])
    assert any("effective length 1000" in str(a.text) for a in curve.layout.annotations)


@pytest.mark.parametrize("build", [
    lambda: depth_grid(10**9),
    lambda: SweepSpec("passkey", (1000,), (50.0,), tuple(range(PRIVATE.sweep_cells + 1))),
    lambda: parse_list(",".join(["1000"] * 10**6), int, "Lengths"),
])
def test_absurd_grids_are_refused_on_their_counts_with_memory_flat(build):
    """A sweep estimate asked for 10**9 depths once grew the server to 20 GB: now the count is refused
    before any list of depths or cells is built."""
    tracemalloc.start()
    try:
        with pytest.raises(HaystackError, match="holds here .2000 cells"):
            build()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20
