"""Task probes on the real embedded model: retrieval found where it should be, log-probabilities checked."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from gradio_client import Client

from engines.decoding.generation import encode
from engines.probes.runner import ProbeOutcome, logprob_of, max_prompt_tokens, run_probe
from engines.probes.tasks import ProbeSpec, build_probe

pytestmark = pytest.mark.model


def outcome_of(loaded, spec, mode="generate") -> ProbeOutcome:
    *_, outcome = run_probe(loaded, build_probe(loaded.tokenizer, spec), mode)
    return outcome


def test_cli_finds_the_passkey_at_4000_tokens():
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--task", "passkey", "--length", "4000",
                           "--depth", "50", "--seed", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert abs(out["prompt_tokens"] - 4000) <= 40 and out["correct"] is True
    assert out["expected"][0] in out["answer"] and out["score"] == 1.0
    assert out["prompt_chars"] == len(out["prompt"]) and len(out["needle_token_spans"]) == 1
    start, end = out["needle_token_spans"][0]
    assert 1800 < start < end < 2200


def test_passkey_found_at_1000_tokens(embedded):
    outcome = outcome_of(embedded, ProbeSpec("passkey", 1000, 50, 2))
    assert outcome.score.correct and outcome.instance.expected[0] in outcome.answer


@pytest.mark.parametrize("depth", [0, 50, 100])
def test_key_value_lookup_at_1000_tokens(embedded, depth):
    outcome = outcome_of(embedded, ProbeSpec("niah_single_1", 1000, depth, 1))
    assert outcome.score.correct, outcome.answer
    assert outcome.score.correct == (outcome.instance.expected[0] in outcome.answer)  # scored independently


def test_uuid_key_value_lookup_in_a_short_json_object(embedded):
    outcome = outcome_of(embedded, ProbeSpec("litm_kv", 500, 50, 2))
    assert outcome.score.correct, outcome.answer


def test_logprob_mode_equals_a_full_forward_pass(embedded):
    instance = build_probe(embedded.tokenizer, ProbeSpec("passkey", 1000, 50, 3))
    assert instance.logprob_lead == "The pass key is" and instance.logprob_target == " " + instance.expected[0]
    result = logprob_of(embedded, instance.prompt, instance.logprob_target, instance.logprob_lead)
    prompt_ids = encode(embedded.tokenizer, instance.prompt)
    lead_ids = encode(embedded.tokenizer, instance.logprob_lead)
    target_ids = encode(embedded.tokenizer, instance.logprob_target)  # digits split the same either way
    ids = torch.cat([prompt_ids, lead_ids, target_ids], dim=1)
    with torch.inference_mode():  # every position's logits, no logits_to_keep
        logp = torch.log_softmax(embedded.model(input_ids=ids).logits[0].float(), dim=-1)
    n = prompt_ids.shape[1] + lead_ids.shape[1]
    reference = sum(float(logp[n - 1 + i, t]) for i, t in enumerate(target_ids[0].tolist()))
    assert result.logprob == pytest.approx(reference, abs=0.05)
    assert result.greedy_match and result.prob > 0.5  # a found passkey is the model's top choice
    outcome = outcome_of(embedded, ProbeSpec("passkey", 1000, 50, 3), "logprob")
    assert outcome.score.correct and outcome.answer.strip() == instance.expected[0]
    wrong = logprob_of(embedded, instance.prompt, " 12345", instance.logprob_lead)
    assert wrong.logprob < result.logprob - 5 and not wrong.greedy_match


def test_prompt_limit_comes_from_the_model_and_memory(embedded):
    limit = max_prompt_tokens(embedded)
    assert 8192 <= limit <= 4 * 8192


def test_haystack_tab_through_gradio_client(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    config = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 32, "default", "causal"]
    figure, summary, prompt, table, view = client.predict("passkey", 1000, 50, 2, "preset", "{}", None, *config,
                                                          api_name="/haystack_build")
    assert abs(summary["prompt_tokens"] - 1000) <= 10 and summary["expected"][0] in prompt
    rows = dict(table["data"])
    assert rows["prompt tokens"] == str(summary["prompt_tokens"]) and rows["expected"] == summary["expected"][0]
    needle = view[view.index('title="needle'):]  # the needle sentence, marked, holds the key
    assert summary["expected"][0] in needle[:needle.index("</span>")] and "&lt;|im_start|&gt;" in view
    out = client.predict("passkey", 1000, 50, 2, "preset", "{}", None, "generate", False, *config,
                         api_name="/haystack_run")
    answer, score, probabilities, verdict, table = out[3], out[4], out[-4], out[-2], out[-1]
    assert score["correct"] is True and summary["expected"][0] in answer
    assert ">found<" in verdict and f"expected <code>{summary['expected'][0]}</code>" in verdict
    assert dict(table["data"])["correct"] == "True" and probabilities is not None
    run = store.get_run(score["run_id"])
    assert run["task"] == "passkey" and run["correct"] is True
    assert run["inputs"]["probe"] == {"task": "passkey", "length": 1000, "depth": 50.0, "seed": 2,
                                      "haystack": None, "params": {}}
    with pytest.raises(Exception, match="not valid JSON"):
        client.predict("passkey", 1000, 50, 2, "preset", "{oops", None, "generate", False, *config,
                       api_name="/haystack_run")


def test_cli_refuses_a_length_beyond_the_limit():
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--task", "passkey", "--length",
                           "1000000", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "beyond what this model and memory allow" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
