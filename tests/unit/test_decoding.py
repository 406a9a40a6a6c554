"""Decoding settings, the diversity figures and the knowledge-conflict verdicts (no model)."""
import math

import pytest
import torch

from engines.config.specs import DecodingSpec, RunConfig, SpecError
from engines.decoding.generation import jsd, repetition_penalized
from engines.decoding.methods.beam import beam_diversity
from engines.studies.conflicts import conflict_summary, load_conflicts, verdict


def test_settings_are_typed_and_round_trip_in_the_run_config():
    spec = DecodingSpec.parse("beam:num_beams=6,length_penalty=0.5")
    assert spec.params == {"num_beams": 6, "length_penalty": 0.5} and spec.get("num_return_sequences") is None
    assert DecodingSpec.parse("dola:layers=12").get("layers") == "12"
    config = RunConfig(decoding=spec)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_dict({"model": {}}).decoding == DecodingSpec()  # runs logged before decoding existed


@pytest.mark.parametrize("text, words", [
    ("diverse_beam:num_beams=4,num_beam_groups=3", "divisible by num_beam_groups"),
    ("sampling:top_p=0", "must be in (0, 1]"),
    ("sampling:top_p=1.01", "must be in (0, 1]"),
    ("cad:alpha=-0.5", "negative"),
    ("sampling:temperature=0", "choose the greedy method"),
    ("beam:num_beams=2,num_return_sequences=3", "num_return_sequences must be 1 to num_beams (2)"),
    ("beam:beams=4", "its settings: num_beams, length_penalty, num_return_sequences"),
    ("nucleus", "Unknown decoding method 'nucleus'. Available: greedy, "),
    ("beam:num_beams", "write KIND[:key=value,...]"),
    ("dola:layers=middle", "high, low, or one layer number"),
    ("contrastive:penalty_alpha=2", "penalty_alpha=2 is out of range; give 0 to 1"),
])
def test_incompatible_settings_say_what_to_change(text, words):
    with pytest.raises(SpecError, match=None) as caught:
        DecodingSpec.parse(text)
    assert words in str(caught.value)


def test_beam_diversity_figures():
    same = beam_diversity([[1, 2, 3], [1, 2, 3]])
    assert same == {"distinct_2": 0.5, "pairwise_overlap": 1.0}
    apart = beam_diversity([[1, 2, 3], [4, 5, 6]])
    assert apart == {"distinct_2": 1.0, "pairwise_overlap": 0.0}
    half = beam_diversity([[1, 2, 3], [1, 2, 4]])  # bigrams {12, 23} and {12, 24}: one shared of three
    assert half["pairwise_overlap"] == pytest.approx(1 / 3, abs=1e-4) and half["distinct_2"] == 0.75


def test_jsd_is_zero_for_equal_and_ln2_for_disjoint_distributions():
    a = torch.tensor([10.0, -10.0, -10.0])
    assert jsd(a, a) == pytest.approx(0.0, abs=1e-6)
    assert jsd(a, torch.tensor([-10.0, 10.0, -10.0])) == pytest.approx(math.log(2), abs=1e-3)


def test_repetition_penalty_pushes_seen_tokens_down():
    scores = repetition_penalized(torch.tensor([2.0, -2.0, 1.0]), [0, 1], 2.0)
    assert scores.tolist() == [1.0, -4.0, 1.0]


def test_knowledge_conflict_set_and_verdicts():
    items = load_conflicts()
    assert len(items) >= 12
    for item in items:
        assert item["context_answer"].lower() in item["context"].lower()
        assert item["memory_answer"].lower() not in item["context"].lower() or item["memory_answer"] == "Paris"
    lyon = items[0]
    assert verdict("The capital of France is Lyon.", lyon) == "context"
    assert verdict("Paris", lyon) == "memory"
    assert verdict("Lyon, not Paris", lyon) == "both"
    assert verdict("Lyonnais", lyon) == "neither"
    rows = [{"method": "a", "verdict": v} for v in ("context", "context", "memory", "neither")]
    assert conflict_summary(rows) == [{"method": "a", "items": 4, "follows_context": 0.5, "follows_memory": 0.25,
                                       "neither": 0.25}]
