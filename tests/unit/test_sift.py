"""SIFT parts without a model: Sticker parsing, answer extraction and normalisation, the prompts."""
import pytest

from engines.studies.sift import (
    Sticker,
    benchmark_summary,
    equivalent,
    extract_answer,
    fill,
    normalize,
    parse_sticker,
    problems,
    prompts,
)


def test_a_well_formed_sticker_parses_and_renders_back():
    text = "Conditions:\n1. Ann has 3 bags.\n2) Each bag holds 4 pens.\nQuestion: How many pens does Ann have?"
    sticker = parse_sticker(text)
    assert sticker == Sticker(("Ann has 3 bags.", "Each bag holds 4 pens."), "How many pens does Ann have?")
    assert parse_sticker(sticker.render()) == sticker
    assert sticker.render().startswith("Conditions:\n1. Ann has 3 bags.\n2. Each bag")


@pytest.mark.parametrize("text", [
    "Question: How many apples does Mira have now?",  # no conditions
    "Conditions:\n1. 12 apples.\n2. 5 given away.",  # no question
    "The Sticker of the problem it solves is: 9",
    "",
])
def test_a_malformed_sticker_is_rejected(text):
    assert parse_sticker(text) is None


def test_only_the_first_question_counts_and_later_numbers_are_not_conditions():
    sticker = parse_sticker("Conditions:\n1. a is 2.\nQuestion: What is a?\n1. stray\nQuestion: other?")
    assert sticker == Sticker(("a is 2.",), "What is a?")


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7. The answer is \\boxed{7}.", "7"),
    ("\\boxed{3} at first, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("The answer is 42.", "42"),
    ("the answer is: $1,250.\nThen more text", "$1,250"),
    ("First the answer is 3. Later, the answer is 7.5 metres.", "7.5 metres"),
    ("no final answer here", None),
    ("\\boxed{unclosed", None),
])
def test_answer_extraction(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("raw, expected", [
    ("12", "12"), ("12.0", "12"), ("12.50", "12.5"), ("$80", "80"), ("\\$80", "80"), ("25%", "25"),
    ("1,250", "1250"), ("85 tulips", "85"), ("-5 degrees", "-5"), ("6/8", "3/4"), ("\\frac{6}{8}", "3/4"),
    ("\\dfrac{10}{2}", "5"), ("4/2", "2"), ("1/3", "1/3"), ("7.5 metres", "7.5"), ("  Lyon. ", "lyon"),
    ("3 * 4 = 12 pens", "12"), ("x = \\frac{3}{6}", "1/2"),
    (None, None),
])
def test_normalisation(raw, expected):
    assert normalize(raw) == expected


def test_equivalence_compares_normal_forms():
    assert equivalent("\\frac{3}{4}", "0.75") and equivalent("$14.00", "14") and equivalent("15/2", "7.5")
    assert not equivalent("14", "15") and not equivalent(None, "14") and not equivalent("", "")


def test_prompts_keep_the_sticker_format_and_user_braces():
    assert {"solve", "sticker", "sticker_only", "query_sticker", "optimize", "inverse"} <= set(prompts())
    for name in ("sticker", "optimize", "inverse"):
        assert "Conditions:\n1. " in prompts()[name] and "Question:" in prompts()[name]
    filled = fill("solve", query="What is {x} + 1?")
    assert "What is {x} + 1?" in filled and "{query}" not in filled


def test_the_mini_benchmark_has_forty_problems_with_numeric_answers():
    items = problems()
    assert len(items) >= 40 and len({item["question"] for item in items}) == len(items)
    assert all(normalize(item["answer"]) == item["answer"] for item in items)


def test_benchmark_summary():
    rows = [{"baseline_correct": True, "sift_correct": True, "resolved_at": "stage 1", "baseline_tokens": 100,
             "sift_tokens": 300},
            {"baseline_correct": False, "sift_correct": True, "resolved_at": "stage 2", "baseline_tokens": 50,
             "sift_tokens": 500}]
    summary = benchmark_summary(rows)
    assert summary["baseline_accuracy"] == 0.5 and summary["sift_accuracy"] == 1.0
    assert summary["resolved_share"] == {"stage 1": 0.5, "stage 2": 0.5, "stage 3": 0.0, "fallback": 0.0}
    assert summary["baseline_tokens_per_item"] == 75.0 and summary["sift_tokens_per_item"] == 400.0


def test_a_missing_answer_is_explained():
    from engines.studies.sift import SiftResult, StageRecord, missing_answer

    def stage(step, new_tokens, answer=None):
        return StageRecord("fallback" if step == "solve" else "stage 1", step, "p", "Let me think", answer, 10,
                           new_tokens, 0.1)
    cut = SiftResult("q", None, "fallback", None, (stage("solve", 64), stage("sticker", 20)))
    assert "64-token budget per call ran out" in missing_answer(cut, 64)
    unformatted = SiftResult("q", None, "fallback", None, (stage("solve", 30),))
    assert "without writing \\boxed" in missing_answer(unformatted, 64)
    answered = SiftResult("q", "14", "stage 1", "14", (stage("solve", 30, "14"),))
    assert missing_answer(answered, 64) is None
