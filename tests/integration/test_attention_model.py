"""Attention capture on the embedded model: equal to eager attention rows, with and without a mask;
a found passkey draws more attention than any same-length span of filler in the top heads."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from gradio_client import Client

from engines.attention.function import AttentionCapture
from engines.attention.views import question_positions, span_mass, stacked
from engines.config.specs import MaskSpec, RopeSpec
from engines.context.masks import visible
from engines.context.run import run_state
from engines.probes.runner import run_probe
from engines.probes.tasks import ProbeSpec, build_probe

pytestmark = pytest.mark.model


@pytest.mark.parametrize("mask", ["causal", "sliding_window:window=64", "sinks:n_sink=4,window=48,reindex=0"])
def test_capture_equals_eager_attention_rows(mask):
    from engines.config.specs import ModelSpec
    from engines.model.loading import MANAGER

    model, spec = MANAGER.get(ModelSpec(dtype="fp32")).model, MaskSpec.parse(mask)
    ids = torch.randint(100, 5000, (1, 200))
    rows = [0, 120, 199]
    seen = visible(spec, torch.arange(200)[:, None], torch.arange(200)[None, :])
    additive = torch.zeros(200, 200).masked_fill(~seen, torch.finfo(torch.float32).min)[None, None]
    with torch.inference_mode():
        capture = AttentionCapture(rows)
        with run_state(model, RopeSpec(), spec, capture=capture):
            model(input_ids=ids)
        model.set_attn_implementation("eager")
        try:
            eager = model(input_ids=ids, attention_mask=additive, output_attentions=True).attentions
        finally:
            model.set_attn_implementation("lab_sdpa")
    assert getattr(model.config, "lab_run", None) is None  # the capture removed itself
    assert sorted(capture.prompt) == list(range(30))
    for layer in range(30):
        assert torch.allclose(capture.prompt[layer], eager[layer][0][:, rows], atol=1e-4), layer


def test_found_passkey_draws_attention_in_the_top_heads(embedded):
    instance = build_probe(embedded.tokenizer, ProbeSpec("passkey", 1500, 50, 2))
    capture = AttentionCapture(question_positions(embedded.tokenizer, instance.prompt, instance.question))
    *_, outcome = run_probe(embedded, instance, capture=capture)
    assert outcome.score.correct and len(capture.steps) == outcome.generation.new_tokens
    matrix = stacked(capture)  # [layers, heads, keys], mean over the question rows
    (start, end), = instance.needle_token_spans
    needle = torch.tensor(span_mass(matrix, [(start, end)]))
    top = torch.topk(needle.flatten(), 5).indices
    hay = next(s for s in instance.spans if s["kind"] == "haystack")
    width = end - start
    for flat in top.tolist():
        layer, head = divmod(flat, matrix.shape[1])
        row = matrix[layer, head]
        filler = [float(row[a:a + width].sum()) for a in range(hay["token_start"] + 8, hay["token_end"] - width, 7)
                  if a + width <= start or a >= end]
        assert needle[layer, head] > max(filler), (layer, head)


def test_haystack_tab_shows_the_attention_views(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    config = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 32, "default", "causal"]
    out = client.predict("passkey", 1000, 50, 2, "preset", "{}", None, "generate", True, *config,
                         api_name="/haystack_run")
    score, profile, mass, positions, segments = out[4], out[6], out[7], out[8], out[9]
    assert score["correct"] is True and all(plot is not None for plot in (profile, mass, positions, segments))
    stored = store.get_run(score["run_id"])["outputs"]["attention"]
    assert len(stored["needle_mass"]) == 30 and len(stored["needle_mass"][0]) == 9
    assert len(stored["profile"]) > 900 and abs(sum(stored["profile"]) - 1) < 1e-3
    needle = next(k for k in stored["segments"] if k.startswith("needle"))
    assert abs(sum(stored["segments"].values()) - 1) < 1e-3 and stored["segments"][needle] > 0
    assert len(stored["layer_position"]) == 30
    assert len(out[10]["choices"]) == 31 and out[12] is not None  # explorer selectors; retrieval heads of the key


def test_retrieval_heads_found_and_masking_them_hurts_more_than_random_heads(embedded):
    import random

    from engines.attention.views import retrieval_scores, step_attention
    from engines.decoding.generation import encode
    from engines.probes.runner import logprob_of

    instance = build_probe(embedded.tokenizer, ProbeSpec("passkey", 1200, 50, 5))
    prompt_ids = encode(embedded.tokenizer, instance.prompt)[0].tolist()
    capture = AttentionCapture([instance.prompt_tokens - 1])
    *_, outcome = run_probe(embedded, instance, capture=capture)
    assert outcome.score.correct
    key_start = instance.prompt.index(instance.expected[0])  # the key's digits inside the needle
    span = next((i, i + len(instance.expected[0])) for i in range(len(prompt_ids))
                if embedded.tokenizer.decode(prompt_ids[i:i + len(instance.expected[0])]) == instance.expected[0])
    generated = [event.token_id for event in outcome.generation.tokens]
    scores = retrieval_scores(step_attention(capture), generated[1:], prompt_ids, span)
    assert key_start > 0 and scores.max() > 0.1  # some head copies the key from the needle
    top = [divmod(i, scores.shape[1]) for i in torch.topk(scores.flatten(), 10).indices.tolist()]
    others = [(layer, head) for layer in range(30) for head in range(9) if (layer, head) not in top]
    baseline = logprob_of(embedded, instance.prompt, instance.logprob_target, instance.logprob_lead).logprob
    with run_state(embedded.model, RopeSpec(), MaskSpec(), heads=top):
        without_top = logprob_of(embedded, instance.prompt, instance.logprob_target, instance.logprob_lead).logprob
    with run_state(embedded.model, RopeSpec(), MaskSpec(), heads=random.Random(0).sample(others, 10)):
        without_random = logprob_of(embedded, instance.prompt, instance.logprob_target,
                                    instance.logprob_lead).logprob
    assert without_top < baseline - 1.0 and without_top < without_random


def test_cli_capture_names_the_question_rows():
    """probe --capture: the captured rows decode to the question (litm_qa's, before its answer prefix)."""
    question = "What is the pass key? Answer with the number only."
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--task", "litm_qa", "--length", "700",
                           "--capture", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    rows_text = output["capture"]["rows_text"].strip()
    assert rows_text.startswith("Question:") and rows_text.endswith("?") and "<|im" not in rows_text
    assert output["prompt"].rfind(rows_text) > output["prompt"].rfind("Document [")  # after the documents
    assert output["capture"]["layers"] == 30 and len(output["capture"]["profile"]) == output["prompt_tokens"]
    free = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--context", "The pass key is 71432.",
                           "--question", question, "--capture", "--no-chat-template", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert json.loads(free.stdout)["capture"]["rows_text"].strip() == question
