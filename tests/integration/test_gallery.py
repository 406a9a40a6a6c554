"""The gallery: its cards and stored results through the CLI with no model, a stored number against
an independent computation, and cards run live through the served app."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gradio_client import Client

from engines.context.run import prose_stream
from services.gallery import card_named, cards, result_sentence

ROOT = Path(__file__).resolve().parent.parent.parent
PAPERS = {"needle-in-a-haystack", "lost-in-the-middle", "beyond-the-window", "attention-sinks", "lm-infinite",
          "retrieval-heads", "needle-threading", "context-aware-decoding", "diverse-beam", "sift",
          "position-bias-masks", "counting-stars", "architectures", "read-twice", "nope", "retrieval-order",
          "structurize", "rerope", "context-knob",
          "parallel-encoding"}
CONFIG = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 32, "default", "causal", "greedy"]


def app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, timeout=300)


def test_every_stored_result_renders_with_no_model():
    done = app("gallery", "--check", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    checked = json.loads(done.stdout)
    assert set(checked["rendered"]) == PAPERS and checked["failed"] == [] and checked["model_loaded"] is False


def test_the_listing_names_paper_claim_result_time_and_stored_run():
    done = app("gallery", "--json")
    assert done.returncode == 0, done.stderr
    listed = {card["name"]: card for card in json.loads(done.stdout)["cards"]}
    assert set(listed) == PAPERS
    for card in listed.values():
        assert card["paper"] and card["claim"] and card["result"] and card["differs"], card["name"]
        assert card["cpu_seconds"] > 0 and (ROOT / card["stored_run"]).exists()
    unknown = app("gallery", "--card", "no-such-card", "--check")
    assert unknown.returncode == 2 and "Available: needle-in-a-haystack" in unknown.stderr


def test_stored_stream_nll_equals_the_models_own_loss(embedded):
    """The attention-sinks card's full-attention curve against transformers' own loss on the same stream."""
    stored = card_named("attention-sinks").stored()["data"]["curves"]["full causal"]
    ids = prose_stream(embedded.tokenizer, len(stored) + 1)
    with torch.inference_mode():
        loss = embedded.model(input_ids=ids, labels=ids).loss.item()
    assert abs(sum(stored) / len(stored) - loss) < 0.02
    assert len(stored) == card_named("attention-sinks").settings["tokens"] - 1


def test_cards_run_live_in_the_served_app(served_app):
    url, _ = served_app
    client = Client(url, verbose=False)
    sentence, *figures = client.predict(*CONFIG, api_name="/gallery_retrieval_heads")
    stored = card_named("retrieval-heads").stored()["data"]
    verdicts = ["found" if row["correct"] else "missed" for row in stored["rows"]]
    assert sentence.startswith("Live") and [word for word in sentence.split() if word in ("found", "missed")] == verdicts
    assert len(figures) == 2 and all(figure is not None for figure in figures)
    sentence, figure = client.predict(*CONFIG, api_name="/gallery_diverse_beam")
    assert sentence.endswith(result_sentence(card_named("diverse-beam"), card_named("diverse-beam").stored()["data"]))
    with pytest.raises(Exception, match="Unknown mask kind"):
        client.predict(*CONFIG[:7], "nosuchmask", "greedy", api_name="/gallery_attention_sinks")
    assert len(cards()) == len(PAPERS)


@pytest.mark.slow
def test_beyond_the_window_card_live_matches_its_stored_result(served_app):
    """The full card (8 probes past the trained window, about two minutes): default RoPE misses,
    YaRN x2 finds, as stored."""
    url, _ = served_app
    sentence, _ = Client(url, verbose=False).predict(*CONFIG, api_name="/gallery_beyond_the_window")
    stored = card_named("beyond-the-window").stored()["data"]
    assert sentence.endswith(result_sentence(card_named("beyond-the-window"), stored))
    assert "default RoPE 0%" in sentence and "YaRN x2 100%" in sentence


def test_the_architectures_card_loads_only_models_the_space_serves(embedded, monkeypatch):
    """Its study loads a second model; on a public Space that serves only SmolLM2 it refuses before any work."""
    from engines.config.errors import SpecError
    from engines.config.specs import RunConfig
    from services.gallery import run_card

    monkeypatch.setenv("CONTEXT_LAB_PUBLIC", "1")
    monkeypatch.delenv("CONTEXT_LAB_MODELS", raising=False)
    with pytest.raises(SpecError, match="This Space serves only smollm2-135m-instruct"):
        next(run_card(embedded, card_named("architectures"), RunConfig()))
