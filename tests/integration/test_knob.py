"""The context-sensitivity knob: its direction against a difference of means computed here prompt by prompt,
the steering hook against the layer's own output, and the knob on the CLI (conflicts curve, a logged and
replayed probe)."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from engines.config.specs import MaskSpec, RopeSpec
from engines.context.run import run_state
from engines.decoding.cache import new_cache
from engines.decoding.generation import encode, format_prompt
from engines.studies.knob import find_knob, find_set
from storage.db import Store
from ui.sessions import record_rows

pytestmark = pytest.mark.model


def app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, timeout=600)


@torch.inference_mode()
def test_direction_is_the_difference_of_means_of_context_and_memory_answers(embedded):
    knob = find_knob(embedded)
    tokenizer, model = embedded.tokenizer, embedded.model
    follows, ignores = [], []
    for item in find_set():  # one prompt at a time, no padding, no lab state
        forced = encode(tokenizer, format_prompt(tokenizer, item["context"], item["question"], answer_prefix="Answer:"))
        logits = model(input_ids=forced).logits[0, -1].float()
        context, memory = (tokenizer(" " + item[side], add_special_tokens=False).input_ids[0]
                           for side in ("context_answer", "memory_answer"))
        plain = encode(tokenizer, format_prompt(tokenizer, item["context"], item["question"]))
        state = model(input_ids=plain, output_hidden_states=True).hidden_states[knob.layer + 1][0, -1].float()
        if logits[context] > logits[memory]:
            follows.append(state)
        elif logits[context] < logits[memory]:
            ignores.append(state)
    assert (len(follows), len(ignores)) == (knob.context, knob.memory) and follows and ignores
    expected = torch.stack(follows).mean(0) - torch.stack(ignores).mean(0)
    direction = torch.tensor(knob.direction)
    assert torch.nn.functional.cosine_similarity(direction, expected, dim=0) > 0.99
    assert abs(direction.norm() / expected.norm() - 1) < 0.05
    assert knob.gains[knob.layer] == max(knob.gains) > 0 and len(knob.gains) == model.config.num_hidden_layers


@torch.inference_mode()
def test_steering_adds_the_vector_from_the_first_position_on_also_when_cached(embedded):
    model, layer = embedded.model, 5
    ids = encode(embedded.tokenizer, "The quick brown fox jumps over the lazy dog again and again.")
    vector = torch.randn(model.config.hidden_size, dtype=model.dtype)
    outputs = []  # the layer's output as the next layer receives it (this hook runs after the run's)

    def seen():
        return model.model.layers[layer].register_forward_hook(lambda module, args, output: outputs.append(output))

    before = dict(model.model.layers[layer]._forward_hooks)
    hook = seen()
    plain_logits = model(input_ids=ids).logits
    hook.remove()
    with run_state(model, RopeSpec(), MaskSpec(), steer=(layer, vector, 7)):
        hook = seen()
        steered_logits = model(input_ids=ids).logits
        cache = new_cache()
        model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
        model(input_ids=ids[:, -1:], cache=cache, use_cache=True)
        hook.remove()
    plain, steered, _, last = outputs
    assert torch.equal(steered[:, :7], plain[:, :7]) and torch.equal(steered_logits[:, :7], plain_logits[:, :7])
    assert torch.equal(steered[:, 7:], plain[:, 7:] + vector)
    assert not torch.allclose(steered_logits[:, 7:], plain_logits[:, 7:])
    assert torch.allclose(last[:, 0].float(), steered[:, -1].float(), atol=0.1)  # a cached step is steered too
    assert dict(model.model.layers[layer]._forward_hooks) == before  # the run's hooks left with it


def test_cli_knob_moves_the_context_share_and_is_logged_with_its_direction():
    done = app("decode", "--conflicts", "--knob", "-2", "--knob", "2", "--json")
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    low, high = output["knob_context_share"]
    assert (low["knob"], high["knob"]) == (-2.0, 2.0) and low["items"] == high["items"] == 15
    assert high["follows_context"] > low["follows_context"]
    assert {row["knob"] for row in output["rows"]} == {-2.0, 2.0}

    probe = app("probe", "--context", "The capital of Zorland is Quibble.", "--question",
                "What is the capital of Zorland?", "--knob", "2", "--json")
    assert probe.returncode == 0, probe.stderr
    run = Store().get_run(json.loads(probe.stdout)["run_id"])
    assert run["config"]["knob"] == 2.0
    assert run["outputs"]["knob"]["layer"] == output["knob_layer"] and len(run["outputs"]["knob"]["direction"]) == 576
    assert ["context knob", f"2 at layer {output['knob_layer']}"] in record_rows(run)  # the Sessions tab says so
    replay = app("replay", run["id"], "--json")
    assert replay.returncode == 0 and json.loads(replay.stdout)["identical"], replay.stderr

    twice = app("probe", "--context", "a", "--question", "b", "--knob", "1", "--knob", "2")
    assert twice.returncode == 2 and "repeat it only on decode --conflicts" in twice.stderr
    wild = app("probe", "--context", "a", "--question", "b", "--knob", "40")
    assert wild.returncode == 2 and "from -10 to 10" in wild.stderr
