"""Every scorer, table-tested with right, wrong and borderline answers."""
import pytest

from engines.config.errors import SpecError
from engines.config.kinds import entries
from engines.probes.scorers import score
from engines.probes.scorers.standard import normalize_answer

U1, U2, U3 = ("0c1eb550-905f-4319-b73b-0b37bd185922", "e19e762d-be22-4859-b045-ac843f30b36a",
              "3a9a124b-a5d1-4e24-9e42-ae68c60c2a58")

CASES = [
    # scorer, answer, refs, expected score, question
    ("exact", "Paris", ["paris"], 1.0, ""),
    ("exact", ' "Paris." ', ["Paris"], 1.0, ""),
    ("exact", "Paris, France", ["Paris"], 0.0, ""),
    ("exact", "", ["Paris"], 0.0, ""),
    ("substring", "The pass key is 49695.", ["49695"], 1.0, ""),
    ("substring", "The pass key is 4969.", ["49695"], 0.0, ""),
    ("substring", "THE CAPITAL IS PARIS", ["paris"], 1.0, ""),
    ("string_match_all", "1234567 and 7654321", ["1234567", "7654321"], 1.0, ""),
    ("string_match_all", "only 1234567", ["1234567", "7654321"], 0.5, ""),
    ("string_match_all", "nothing", ["1234567", "7654321", "1111111", "2222222"], 0.0, ""),
    ("string_match_part", "it is 512 metres high", ["512 metres", "512"], 1.0, ""),
    ("string_match_part", "about five hundred", ["512 metres", "512"], 0.0, ""),
    ("best_subspan_em", "Tomas Brell started it.", ["Tomas Brell"], 1.0, ""),
    ("best_subspan_em", "The answer is: the Tomas-Brell!", ["Tomas Brell"], 0.0, ""),
    ("best_subspan_em", "the  TOMAS, brell", ["Tomas Brell"], 1.0, ""),
    ("best_subspan_em", "I think so.\nTomas Brell", ["Tomas Brell"], 0.0, ""),  # first line only
    ("best_subspan_em", "an Ada Fenwick", ["The Ada Fenwick"], 1.0, ""),  # articles dropped
    ("uuid_prefix", f"{U1}", [U1], 1.0, ""),
    ("uuid_prefix", f'The value of "{U2}" is {U1}.', [U1], 1.0, f'What is the value of "{U2}"?'),
    ("uuid_prefix", f'The value of "{U2}" is {U1}.', [U1], 0.0, ""),  # without the question, U2 comes first
    ("uuid_prefix", f"{U1[:-1]}0", [U1], 0.0, ""),
    ("multi_value_recall", f"{U1}, {U3}", [U1, U2, U3], pytest.approx(2 / 3, abs=1e-6), ""),
    ("multi_value_recall", f"{U3}, {U2}, {U1}", [U1, U2, U3], 1.0, ""),
    ("multi_value_recall", "98, 5, 20", ["98", "5", "20"], 1.0, ""),
    ("multi_value_recall", "98, 5", ["98", "5", "5"], pytest.approx(2 / 3, abs=1e-6), ""),  # multiplicity
    ("multi_value_recall", "598", ["98", "5"], 0.0, ""),  # whole numbers, not digits inside
    ("chain_progress", f"The final value is {U3}", [U1, U2, U3], 1.0, ""),
    ("chain_progress", f"It is {U2}", [U1, U2, U3], pytest.approx(2 / 3, abs=1e-6), ""),
    ("chain_progress", "no idea", [U1, U2, U3], 0.0, ""),
    ("first_number", " 4512. The pass key is 4512.", ["4512"], 1.0, ""),
    ("first_number", "It is 12 or 4512", ["4512"], 0.0, ""),  # the first number only, as the Landmark release reads it
    ("first_number", "45120", ["4512"], 0.0, ""),
    ("counting_stars_searching", '{"little_penguin": [3, 1, 2]}', ["1", "2", "3"], 1.0, ""),
    ("counting_stars_searching", 'Sure: {"little_penguin": [1, 1, 1, 2]}', ["1", "2", "3"], pytest.approx(1 / 3), ""),
    ("counting_stars_searching", "no stars", ["1", "2"], 0.0, ""),
    ("counting_stars_reasoning", '{"little_penguin": [5, 7]}', ["5/6", "7/8"], 1.0, ""),
    ("counting_stars_reasoning", '{"little_penguin": [6, 8]}', ["5/6", "7/8"], 0.25, ""),
    ("value_prefix", f' "{U1}" is the value', [U1], 1.0, ""),
    ("value_prefix", f"The value is {U1}", [U1], 0.0, ""),  # the release compares the answer's first characters
]


@pytest.mark.parametrize("name, answer, refs, expected, question", CASES)
def test_scorer_table(name, answer, refs, expected, question):
    assert score(name, answer, refs, question).score == expected


def test_every_scorer_is_covered_by_the_table():
    assert {case[0] for case in CASES} == set(entries("scorer"))


def test_correct_means_full_score():
    assert score("string_match_all", "1234567", ["1234567", "7654321"]).correct is False
    assert score("chain_progress", f"{U1} {U3}", [U1, U2, U3]).correct is True


def test_counting_stars_position_curve():
    details = score("multi_value_recall", "98, 20, 5", ["98", "5", "20"]).details
    assert details["in_position"] == [True, False, False]


def test_normalisation_and_unknown_scorer():
    assert normalize_answer("  The  Quick, brown FOX! ") == "quick brown fox"
    with pytest.raises(SpecError, match="Unknown scorer 'judge'. Available: exact"):
        score("judge", "a", ["a"])
