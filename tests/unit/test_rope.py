"""RoPE kinds: our frequency maths against transformers' own rope init functions, and switching a
model's rotary embedding at runtime (and back exactly)."""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from engines.config.specs import MaskSpec, RopeSpec, SpecError
from engines.context.rope import frequencies, rope_parameters
from engines.context.run import run_state

BASE, DIM, TRAINED = 1e5, 64, 8192  # the embedded model's rope_theta, head_dim and window


def transformers_frequencies(spec: RopeSpec, seq_len=None):
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, head_dim=DIM, max_position_embeddings=TRAINED,
                         rope_parameters=rope_parameters(spec, BASE, TRAINED, DIM))
    return ROPE_INIT_FUNCTIONS[spec.kind](config, "cpu", seq_len=seq_len)


@pytest.mark.parametrize("spec, seq_len", [
    (RopeSpec("linear", 4.0), None),
    (RopeSpec("yarn", 2.0), None),
    (RopeSpec("yarn", 8.0, {"beta_fast": 16.0, "beta_slow": 2.0}), None),
    (RopeSpec("yarn", 4.0, {"attention_factor": 1.3}), None),
    (RopeSpec("llama3", 8.0), None),
    (RopeSpec("llama3", 4.0, {"low_freq_factor": 2.0, "high_freq_factor": 8.0}), None),
    (RopeSpec("longrope", 4.0), 4096),
    (RopeSpec("longrope", 4.0), 20000),
    (RopeSpec("dynamic", 2.0), 20000),
    (RopeSpec("dynamic", 2.0), 4096),
])
def test_frequencies_equal_transformers(spec, seq_len):
    ours, our_factor = frequencies(spec, BASE, DIM, TRAINED, seq_len)
    theirs, their_factor = transformers_frequencies(spec, seq_len if spec.kind != "dynamic" or seq_len > TRAINED
                                                    else None)
    assert torch.allclose(ours.float(), theirs.float(), rtol=1e-5, atol=1e-12)
    assert our_factor == pytest.approx(their_factor)


def test_ntk_and_giraffe_follow_their_formulas():
    theta = 1.0 / BASE ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM)
    ntk, _ = frequencies(RopeSpec("ntk", 4.0), BASE, DIM, TRAINED)
    grown = BASE * 4.0 ** (DIM / (DIM - 2))
    assert torch.allclose(ntk, 1.0 / grown ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM))
    assert ntk[0] == theta[0] and ntk[-1] == pytest.approx(theta[-1] / 4.0)  # highest pair kept, lowest / s
    giraffe, _ = frequencies(RopeSpec("giraffe", 2.0, {"truncation": 4096.0}), BASE, DIM, TRAINED)
    cutoff = 2 * math.pi / 4096
    for f, g in zip(theta.tolist(), giraffe.tolist()):
        assert g == (f if f >= cutoff else cutoff / 16 if f >= cutoff / 8 else 0.0)


@pytest.mark.parametrize("text, expected", [
    ("yarn:2", RopeSpec("yarn", 2.0)),
    ("yarn:2,beta_fast=16", RopeSpec("yarn", 2.0, {"beta_fast": 16.0})),
    ("linear:4", RopeSpec("linear", 4.0)),
    ("default", RopeSpec()),
])
def test_parse(text, expected):
    assert RopeSpec.parse(text) == expected
    assert RopeSpec.from_dict(expected.to_dict()) == expected


@pytest.mark.parametrize("text, words", [
    ("yarn:0", "out of range"), ("yarn:65", "out of range"), ("yarn:-1", "out of range"),
    ("wobble:2", "Unknown RoPE kind 'wobble'"), ("yarn:2,alpha=3", "has no setting alpha"),
    ("linear:abc", "factor='abc' must be a finite number"),
])
def test_bad_settings(text, words):
    with pytest.raises(SpecError, match=words):
        RopeSpec.parse(text)


def test_switching_changes_logits_and_default_restores_them_exactly():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 100))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        for kind in ("linear", "ntk", "yarn", "giraffe", "llama3", "longrope"):
            with run_state(model, RopeSpec(kind, 2.0), MaskSpec()):
                assert not torch.equal(model(input_ids=ids).logits, before), kind
        with run_state(model, RopeSpec("dynamic", 2.0), MaskSpec()):  # identical to default within the window
            assert torch.allclose(model(input_ids=ids[:, :60]).logits, before[:, :60], atol=1e-5)
        with run_state(model, RopeSpec(), MaskSpec()):
            assert torch.equal(model(input_ids=ids).logits, before)
        assert torch.equal(model(input_ids=ids).logits, before)
