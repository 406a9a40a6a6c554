"""The real embedded model: loading, greedy streaming against transformers' generate, quantized loads."""
import json
import random
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from engines.config.specs import ModelSpec
from engines.decoding.generation import encode, format_prompt, generate
from engines.model.loading import MANAGER, ModelError, embedded_model_dir

pytestmark = pytest.mark.model

CAPITAL = ("The capital of France is Paris.", "What is the capital of France?")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def test_embedded_model_is_the_converted_smollm2(embedded):
    config = embedded.model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.max_position_embeddings == 8192 and config.rope_parameters["rope_theta"] == 1e5
    assert "sha256:b179c952" in (embedded_model_dir() / "SOURCE").read_text()
    assert embedded.describe()["footprint_mb"] > 100


def test_cli_probe_answers_the_capital_question():
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--context", CAPITAL[0],
                           "--question", CAPITAL[1], "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert "Paris" in output["answer"]
    assert output["prompt"].endswith("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert output["prompt_tokens"] > 10 and output["model"] == "smollm2-135m-instruct"
    assert output["dtype"] in ("bf16", "fp32") and output["quant"] == "none" and output["seconds"] > 0
    assert output["attention_path"] == "cpu-fused"


def test_window_mask_runs_alike_on_the_portable_path():
    """What runs off the CPU (plain torch ops), forced on the CPU: the same windowed probe scores the
    gold answer alike and the JSON names the path."""
    import os

    outputs = {}
    for forced in ("0", "1"):
        done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--task", "passkey", "--length", "700",
                               "--mask", "sinks:n_sink=4,window=256,reindex=1", "--score", "logprob", "--dtype", "fp32",
                               "--json"], capture_output=True, text=True, timeout=300,
                              env=os.environ | {"CONTEXT_LAB_PORTABLE_ATTENTION": forced})
        assert done.returncode == 0, done.stderr
        outputs[forced] = json.loads(done.stdout)
    assert outputs["0"]["attention_path"] == "cpu-fused" and outputs["1"]["attention_path"] == "portable"
    assert outputs["1"]["logprob"] == pytest.approx(outputs["0"]["logprob"], abs=1e-3)


def test_greedy_stream_equals_transformers_generate(embedded):
    prompt = format_prompt(embedded.tokenizer, *CAPITAL)
    ours = generate(embedded, prompt, 24)
    ids = encode(embedded.tokenizer, prompt)
    with torch.inference_mode():
        reference = embedded.model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:]
    assert [event.token_id for event in ours.tokens] == reference.tolist()[:ours.new_tokens]
    assert all(0 < event.prob <= 1 and len(event.top) == 5 for event in ours.tokens)
    assert ours.tokens[0].top[0][1] == pytest.approx(ours.tokens[0].prob, rel=1e-5)  # greedy = top-1


def test_chat_template_adds_exactly_one_bos(embedded):
    """SmolLM2's BOS is <|im_start|>, which also opens every turn: tokenizing adds none of its own."""
    tokenizer = embedded.tokenizer
    prompt = format_prompt(tokenizer, *CAPITAL)
    ids = encode(tokenizer, prompt)[0].tolist()
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == prompt.count(tokenizer.bos_token) == 3  # system, user, assistant


def test_passkey_in_2000_tokens_of_filler_is_found(embedded):
    key = random.Random(7).randint(1, 50000)
    filler = FILLER * 42  # about 1,000 tokens each side
    context = (f"There is important information hidden in a lot of irrelevant text. Find it and memorize it.\n"
               f"{filler}The pass key is {key}. Remember it. {key} is the pass key. {filler}")
    prompt = format_prompt(embedded.tokenizer, context, "What is the pass key? Answer with the number only.")
    result = generate(embedded, prompt, 16)
    assert 1900 <= result.prompt_tokens <= 2300
    assert str(key) in result.text


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_loads_answer_the_capital_question(quant):
    loaded = MANAGER.get(ModelSpec(quant=quant))
    try:
        assert loaded.describe()["quant"] == quant
        prompt = format_prompt(loaded.tokenizer, CAPITAL[0], CAPITAL[1] + " Answer with one word.")
        assert "Paris" in generate(loaded, prompt, 16).text
        full = MANAGER.get(ModelSpec(quant="none", dtype=loaded.dtype_name))
        assert loaded.footprint_bytes < full.footprint_bytes
    finally:
        MANAGER.get(ModelSpec())


def test_unreachable_hub_model_keeps_the_previous_model(embedded):
    before = MANAGER.get(ModelSpec())
    with pytest.raises(ModelError, match="local directory"):
        MANAGER.get(ModelSpec(model="someone/unreachable-model"))
    assert MANAGER.loaded is before


def test_cancel_stops_within_one_step(embedded):
    prompt = format_prompt(embedded.tokenizer, FILLER * 5, "Write a long story about the sky.")
    steps = []
    result = generate(embedded, prompt, 200, should_stop=lambda: len(steps) >= 3 or steps.append(1))
    assert result.finish == "cancelled" and result.new_tokens == 3
