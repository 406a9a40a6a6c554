"""Every entry point that runs the model under a RunConfig does so under that configuration, and
leaves the model exactly as it found it.

Each entry point runs twice on the embedded model: with plain causal attention and with a 4-token
sliding window. A hook on the first attention layer records which mask was active at every forward
pass; the answers (or numbers) must differ between the two, and after each run the model's rotary
module, its run state and its logits on a fixed input are what they were before.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engines.attention.function import AttentionCapture
from engines.attention.state import current
from engines.config.specs import DecodingSpec, MaskSpec, RopeSpec, RunConfig
from engines.context.run import token_nll
from engines.decoding.generation import format_prompt
from engines.model.loading import MANAGER
from engines.probes.runner import full_head_map, masking_effect, run_free, run_probe
from engines.probes.tasks import ProbeSpec, build_probe
from engines.studies.conflicts import run_conflicts
from engines.studies.sift import run_sift, sticker_attention
from engines.studies.sweeps import SweepSpec, build_cells, calibrate, run_sweep
from services.replay import replay
from services.run_log import log_probe
from storage.db import Store

pytestmark = pytest.mark.model

PLAIN = RunConfig(max_new_tokens=8)
WINDOW = dataclasses.replace(PLAIN, mask=MaskSpec("sliding_window", {"window": 4}))
PROMPT_TEXT = ("The capital of France is Paris.", "What is the capital of France? Answer with one word.")


def passkey(loaded):
    return build_probe(loaded.tokenizer, ProbeSpec("passkey", 300, 50, 1))


def last(items):
    *_, final = items
    return final


ENTRY_POINTS = {
    "free probe": lambda loaded, config: last(run_free(
        loaded, format_prompt(loaded.tokenizer, *PROMPT_TEXT), config)).text,
    "free probe with capture": lambda loaded, config: last(run_free(
        loaded, format_prompt(loaded.tokenizer, *PROMPT_TEXT), config, capture=AttentionCapture([5]))).text,
    "task probe": lambda loaded, config: last(run_probe(loaded, passkey(loaded), "generate", config)).answer,
    "logprob probe": lambda loaded, config: last(run_probe(loaded, passkey(loaded), "logprob", config)).score.score,
    "sweep": lambda loaded, config: [r.outcome.answer for r in run_sweep(
        loaded, SweepSpec("passkey", (300,), (0.0, 100.0)),
        build_cells(loaded.tokenizer, SweepSpec("passkey", (300,), (0.0, 100.0)), True), config=config)],
    "sweep calibration": lambda loaded, config: calibrate(loaded, config) and None,
    "beam decoding": lambda loaded, config: last(run_free(
        loaded, format_prompt(loaded.tokenizer, *PROMPT_TEXT),
        dataclasses.replace(config, decoding=DecodingSpec("beam", {"num_beams": 2})))).text,
    "context-aware decoding": lambda loaded, config: last(run_free(
        loaded, format_prompt(loaded.tokenizer, *PROMPT_TEXT), dataclasses.replace(config, decoding=DecodingSpec("cad")),
        plain_prompt=format_prompt(loaded.tokenizer, "", PROMPT_TEXT[1]))).text,
    "knowledge-conflict set": lambda loaded, config: [row["answer"] for row in run_conflicts(
        loaded, config, [DecodingSpec()], limit=1)],
    "SIFT": lambda loaded, config: [getattr(r, "output", None) for r in run_sift(
        loaded, "Ann has 3 bags with 4 pens in each bag. How many pens does Ann have?", config, budget=8)][:2],
    "SIFT Sticker attention": lambda loaded, config: sticker_attention(
        loaded, config, "Ann has 3 bags with 4 pens in each. How many pens?", "Conditions: 3 bags, 4 pens each.",
        budget=4)["sticker_mass"],
    "context NLL stream": lambda loaded, config: round(sum(token_nll(
        loaded.model, loaded.tokenizer(" ".join(["The grass is green. The sky is blue."] * 8),
                                       return_tensors="pt").input_ids, config.rope, config.mask)), 3),
    "full head map": lambda loaded, config: full_head_map(
        loaded, format_prompt(loaded.tokenizer, *PROMPT_TEXT), config, 3, 0, side=16)["map"],
    "head masking": lambda loaded, config: [row["answer"] for row in masking_effect(
        loaded, passkey(loaded), config, [(10, 1), (12, 3)])],
}


@pytest.fixture
def observed(embedded):
    """The masks active at each forward pass of the first attention layer, and the model's state before."""
    seen = []
    attention = embedded.model.model.layers[0].self_attn
    handle = attention.register_forward_pre_hook(
        lambda module, args: seen.append(getattr(current(module.config).rule, "spec", MaskSpec())))
    ids = torch.randint(100, 5000, (1, 40))
    with torch.inference_mode():
        logits = embedded.model(input_ids=ids).logits
    before = (embedded.model.model.rotary_emb, ids, logits)
    yield seen, before
    handle.remove()


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_entry_point_runs_under_its_configuration_and_restores_the_model(embedded, observed, name):
    seen, (rotary, ids, logits) = observed
    results = {}
    for config in (PLAIN, WINDOW):
        seen.clear()
        results[config.mask.kind] = ENTRY_POINTS[name](embedded, config)
        assert seen and all(mask == config.mask for mask in seen), (name, config.mask, set(map(str, seen)))
        assert embedded.model.model.rotary_emb is rotary and getattr(embedded.model.config, "lab_run", None) is None
        with torch.inference_mode():
            assert torch.equal(embedded.model(input_ids=ids).logits, logits), name
    if name != "sweep calibration":  # calibration times the model; its mask is checked above
        assert results["causal"] != results["sliding_window"], (name, results)


@pytest.mark.parametrize("mask", ["segments", "pine", "ape", "pine_full"])
def test_time_estimates_calibrate_masks_that_need_documents(embedded, mask):
    """A sweep's estimate times its mask: one that needs documents is timed on prompts made of them."""
    speed = calibrate(embedded, dataclasses.replace(PLAIN, mask=MaskSpec(mask)))
    assert speed.prefill(0, 1000) > 0 and speed.decode > 0
    assert getattr(embedded.model.config, "lab_run", None) is None


def test_rope_is_applied_and_removed_with_the_run(embedded):
    rotary = embedded.model.model.rotary_emb
    yarn = dataclasses.replace(PLAIN, rope=RopeSpec("yarn", 2.0))
    seen = []
    handle = embedded.model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: seen.append(embedded.model.model.rotary_emb))
    try:
        last(run_probe(embedded, passkey(embedded), "generate", yarn))
    finally:
        handle.remove()
    assert seen and all(r is not rotary for r in seen) and embedded.model.model.rotary_emb is rotary


def test_a_run_that_fails_or_is_cancelled_still_restores_the_model(embedded):
    rotary = embedded.model.model.rotary_emb
    stream = run_free(embedded, format_prompt(embedded.tokenizer, *PROMPT_TEXT),
                      dataclasses.replace(WINDOW, rope=RopeSpec("linear", 2.0), max_new_tokens=16))
    next(stream)  # mid-run: the window and linear RoPE are on
    assert current(embedded.model.config).rule is not None and embedded.model.model.rotary_emb is not rotary
    stream.close()  # what Cancel does
    assert embedded.model.model.rotary_emb is rotary and getattr(embedded.model.config, "lab_run", None) is None
    with pytest.raises(Exception, match="needs a prompt made of documents"):
        last(run_probe(embedded, passkey(embedded), "generate", dataclasses.replace(PLAIN, mask=MaskSpec("segments"))))
    assert embedded.model.model.rotary_emb is rotary and getattr(embedded.model.config, "lab_run", None) is None


def test_replay_runs_under_the_logged_configuration(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'lab.sqlite'}")
    session = store.new_session()
    loaded = MANAGER.get(WINDOW.model)  # the model replay will use (the slot may hold another)
    outcome = last(run_probe(loaded, passkey(loaded), "generate", WINDOW))
    run_id = log_probe(store, session, WINDOW, loaded, outcome)
    seen = []
    handle = loaded.model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: seen.append(getattr(current(module.config).rule, "spec", MaskSpec())))
    try:
        result = replay(store, run_id)
    finally:
        handle.remove()
    assert result["identical"] is True and seen and all(mask == WINDOW.mask for mask in seen)
