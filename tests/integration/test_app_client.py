"""The app served in-process and driven through gradio_client, like a script user would."""
import pytest
from gradio_client import Client

pytestmark = pytest.mark.model

CONFIG = {"capture": False, "model": "smollm2-135m-instruct", "quant": "none", "quant_4bit_type": "nf4", "dtype": "auto",
          "chat_template": True, "max_new_tokens": 32, "rope": "default", "mask": "causal"}


def test_probe_through_gradio_client_answers_and_logs(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    answer, stats, prompt, status, *plots = client.predict(
        "The capital of France is Paris.", "What is the capital of France?", *CONFIG.values(), api_name="/probe")
    assert "Paris" in answer
    assert stats["prompt_tokens"] > 10 and stats["time_to_first_token_s"] > 0 and stats["tokens_per_second"] > 0
    assert "What is the capital of France?" in prompt and "smollm2-135m-instruct" in status
    run = store.get_run(stats["run_id"])
    assert run["kind"] == "probe" and run["outputs"]["text"] == answer and run["prompt"] == prompt
    assert run["config"]["model"]["model"] == "smollm2-135m-instruct"


def test_bad_settings_come_back_as_a_sentence(served_app):
    url, _ = served_app
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="Enter a question"):
        client.predict("ctx", "  ", *CONFIG.values(), api_name="/probe")
    with pytest.raises(Exception, match="Max new tokens|less than minimum value 1"):
        client.predict("ctx", "q", *{**CONFIG, "max_new_tokens": 0}.values(), api_name="/probe")
    with pytest.raises(Exception, match="needs a prompt made of documents"):
        client.predict("ctx", "q", *{**CONFIG, "mask": "segments"}.values(), api_name="/probe")
    with pytest.raises(Exception, match="window .* must be larger than the sink count"):
        client.predict("ctx", "q", *{**CONFIG, "mask": "sinks:n_sink=8,window=4"}.values(), api_name="/probe")
    with pytest.raises(Exception, match="Could not fetch the model"):
        client.predict("ctx", "q", *{**CONFIG, "model": "someone/unreachable"}.values(), api_name="/probe")
    with pytest.raises(Exception, match="tokens; this model and the free memory allow at most .* Shorten the context"):
        client.predict("The grass is green. " * 9000, "q", *CONFIG.values(), api_name="/probe")  # about 45K tokens
    with pytest.raises(Exception, match="characters; .* Shorten the context"):
        client.predict("x" * 1_100_000, "q", *CONFIG.values(), api_name="/probe")  # refused before tokenizing


def test_probe_with_attention_capture_shows_and_logs_it(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    answer, stats, prompt, status, profile, positions, layer, head, retrieval, probabilities, view, table = client.predict(
        "The capital of France is Paris.", "What is the capital of France? Answer with one word.",
        *{**CONFIG, "capture": True}.values(), api_name="/probe")
    assert "Paris" in answer and profile is not None and positions is not None
    assert layer["value"] == "all" and len(layer["choices"]) == 31 and len(head["choices"]) == 10  # explorer ready
    assert "background:rgba(255,127,14," in view and "attention 0." in view  # the prompt shaded token by token
    assert dict(table["data"])["prompt tokens"] == str(stats["prompt_tokens"]) and probabilities is not None
    attention = store.get_run(stats["run_id"])["outputs"]["attention"]
    assert len(attention["profile"]) == stats["prompt_tokens"] and len(attention["layer_position"]) == 30
    assert abs(sum(attention["profile"]) - 1) < 1e-3
