"""Context transforms: Just Read Twice and the question sandwich, applied to built prompts with every
copy of the needles marked, sized to the asked length, logged with the run and replayed."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from engines.config.errors import HaystackError
from engines.config.specs import TransformSpec
from engines.probes.tasks import ProbeSpec, build_probe
from storage.db import Store

pytestmark = pytest.mark.model


def app(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), *args, "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("transform, copies", [("jrt", 2), ("jrt:times=3", 3), ("sandwich", 1), ("none", 1)])
def test_every_copy_of_the_needle_is_marked_and_the_length_holds(tokenizer, transform, copies):
    plain = build_probe(tokenizer, ProbeSpec("passkey", 2000, 50, 1), True)
    instance = build_probe(tokenizer, ProbeSpec("passkey", 2000, 50, 1), True, transform=TransformSpec.parse(transform))
    needles = [s for s in instance.spans if s["kind"] == "needle"]
    needle = plain.prompt[plain.spans[1]["char_start"]:plain.spans[1]["char_end"]]
    assert len(needles) == copies == instance.prompt.count(needle)
    assert all(instance.prompt[s["char_start"]:s["char_end"]] == needle for s in needles)
    ids = tokenizer(instance.prompt, add_special_tokens=False).input_ids
    assert all(needle.strip().startswith(tokenizer.decode(ids[s["token_start"]:s["token_end"]]).strip()[:10])
               for s in needles)
    assert abs(instance.prompt_tokens - 2000) <= 20
    question_count = instance.prompt.count(instance.question)
    assert question_count == (2 if transform == "sandwich" else 1)
    if transform == "sandwich":
        assert instance.prompt.index(instance.question) < needles[0]["char_start"]


def test_a_benchmark_template_is_not_transformed(tokenizer):
    with pytest.raises(HaystackError, match="keeps its benchmark's own template"):
        build_probe(tokenizer, ProbeSpec("ruler.niah_single_1", 2000, 50, 1), True, transform=TransformSpec("jrt"))


def test_cli_probe_reads_the_context_twice_logs_it_and_replays_it():
    context = "The capital of Zorland is Quibble."
    output = app("probe", "--context", context, "--question", "What is the capital of Zorland?", "--transform", "jrt")
    assert output["transform"] == "jrt" and output["prompt"].count(context) == 2
    assert Store().get_run(output["run_id"])["config"]["transform"] == {"kind": "jrt", "params": {}}
    assert app("replay", output["run_id"])["identical"]  # the rebuilt prompt, context twice, is the stored one
    task = app("probe", "--task", "passkey", "--length", "1200", "--transform", "sandwich")
    assert task["transform"] == "sandwich" and task["prompt"].count("What is the pass key?") == 2


def test_sweep_b_keeps_as_transform_unless_told():
    from engines.config.specs import RunConfig
    from ui.sweep import b_config

    a = RunConfig(transform=TransformSpec.parse("jrt:times=3"))
    b = b_config(a, "gemma3-270m", "none", "auto", True, "")
    assert b.transform == a.transform and b.model.model == "gemma3-270m"
