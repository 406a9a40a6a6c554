"""Each recipe of docs/EXTENDING.md, followed for real: a toy kind is registered the way a new file
would register it, then used through the lab's own entry points and checked against a reference
computed here. The registry is restored after each test."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from cli import build_parser, cmd_kinds
from engines.config.kinds import FAMILIES, Setting, entries, register
from engines.config.specs import DecodingSpec, MaskSpec, ModelSpec, RopeSpec, RunConfig, SpecError, TransformSpec
from engines.context.masks import MaskKind, visible
from engines.context.rope import RopeKind, default_inv_freq
from engines.context.run import run_state
from engines.context.transforms import TransformKind
from engines.decoding.generation import encode, format_prompt
from engines.decoding.methods import ChooserMethod
from engines.model.loading import MANAGER
from engines.probes.runner import run_free, run_probe
from engines.probes.scorers import Score, score, scorer
from engines.probes.sources import HaystackSource
from engines.probes.tasks import ProbeSpec, TaskSpec, build_probe

pytestmark = pytest.mark.model


@pytest.fixture
def registry():
    """The registry as the lab ships it, put back after the test."""
    shipped = {family: dict(entries(family)) for family in FAMILIES}
    yield
    for family, kinds in shipped.items():
        entries(family).clear()
        entries(family).update(kinds)


def last(items):
    *_, final = items
    return final


def test_a_decoding_method_in_one_file(embedded, registry):
    @register
    class RunnerUp(ChooserMethod):
        name = "runner_up"
        description = "the second most probable token at the first `steps` steps, then greedy"
        settings = (Setting("steps", "int", 1, "how many steps take the runner-up", 0, 64),)

        def chooser(self, job):
            def choose(logits, outputs, ids):
                rank = 1 if len(ids) - job.input_ids.shape[1] < job.spec.get("steps") else 0
                return int(torch.topk(logits, 2).indices[rank]), logits, {"rank": rank}
            return choose

    prompt = format_prompt(embedded.tokenizer, "The capital of France is Paris.", "What is the capital of France?")
    config = RunConfig(max_new_tokens=3, decoding=DecodingSpec.parse("runner_up:steps=1"))
    result = last(run_free(embedded, prompt, config))
    with torch.inference_mode():
        logits = embedded.model(input_ids=encode(embedded.tokenizer, prompt)).logits[0, -1]
    assert result.tokens[0].token_id == int(torch.topk(logits, 2).indices[1])
    assert [t.extra["rank"] for t in result.tokens] == [1, 0, 0]
    listed = cmd_kinds(build_parser().parse_args(["kinds", "--family", "decoding"]))["decoding"]
    assert {"name": "runner_up", "description": RunnerUp.description,
            "settings": [{"name": "steps", "type": "int", "default": 1, "range": "0 to 64",
                          "meaning": "how many steps take the runner-up"}]} in listed
    with pytest.raises(SpecError, match="steps=99 is out of range; give 0 to 64"):
        DecodingSpec.parse("runner_up:steps=99")


def test_a_mask_kind_in_one_file(embedded, registry):
    @register
    class EvenKeys(MaskKind):
        name = "even_keys"
        description = "each query sees itself and the earlier keys at even positions"

        def visible(self, spec, q, k, seg_q, seg_k):
            return (k <= q) & ((k % 2 == 0) | (k == q))

    model, ids = MANAGER.get(ModelSpec(dtype="fp32")).model, torch.randint(100, 5000, (1, 48))
    seen = torch.tensor([[j <= i and (j % 2 == 0 or j == i) for j in range(48)] for i in range(48)])
    assert torch.equal(visible(MaskSpec("even_keys"), torch.arange(48)[:, None], torch.arange(48)[None, :]), seen)
    additive = torch.zeros(48, 48, dtype=model.dtype).masked_fill(~seen, torch.finfo(model.dtype).min)[None, None]
    with torch.inference_mode():
        with run_state(model, RopeSpec(), MaskSpec("even_keys")):
            ours = model(input_ids=ids).logits.float()
        model.set_attn_implementation("eager")
        try:
            reference = model(input_ids=ids, attention_mask=additive).logits.float()
        finally:
            model.set_attn_implementation("lab_sdpa")
        plain = model(input_ids=ids).logits.float()
    assert (ours - reference).abs().max() < 1e-3 and (ours - plain).abs().max() > 1.0


def test_a_rope_kind_in_one_file(embedded, registry):
    @register
    class Halved(RopeKind):
        name = "halved"
        description = "every frequency halved (the same as linear scaling by 2)"

        def frequencies(self, spec, base, dim, trained, seq_len):
            return default_inv_freq(base, dim) / 2, 1.0

    ids = torch.randint(100, 5000, (1, 64))
    with torch.inference_mode():
        with run_state(embedded.model, RopeSpec("halved"), MaskSpec()):
            ours = embedded.model(input_ids=ids).logits
        with run_state(embedded.model, RopeSpec("linear", 2.0), MaskSpec()):
            linear = embedded.model(input_ids=ids).logits
        plain = embedded.model(input_ids=ids).logits
    assert torch.allclose(ours, linear, atol=1e-3) and not torch.allclose(ours, plain, atol=1e-1)


def test_a_context_transform_in_one_file(embedded, registry):
    @register
    class Headed(TransformKind):
        name = "headed"
        description = "the context under a line that says what follows"
        settings = (Setting("heading", "str", "Read the following text carefully.", "the line before the context"),)

        def apply(self, spec, context, question):
            return f"{spec.get('heading')}\n{context}", question

    instance = build_probe(embedded.tokenizer, ProbeSpec("passkey", 800, 50, 1), True, transform=TransformSpec("headed"))
    heading = instance.prompt.index("Read the following text carefully.\n")
    needle = next(span for span in instance.spans if span["kind"] == "needle")
    assert heading < needle["char_start"] and "The pass key is" in instance.prompt[needle["char_start"]:needle["char_end"]]
    assert abs(instance.prompt_tokens - 800) <= 8
    assert "headed" in [kind["name"] for kind in cmd_kinds(build_parser().parse_args(["kinds"]))["transform"]]


def test_a_source_a_scorer_and_a_task_preset(embedded, registry):
    @register
    class Counting(HaystackSource):
        name = "counting"
        description = "numbered sentences, one after another"

        def units(self, rng):
            for number in itertools.count(rng.randrange(1000)):
                yield f"This is sentence {number}."

    @scorer
    def digits_only(answer, refs, question=""):
        """The answer has a reference and no letters."""
        hit = any(ref in answer for ref in refs) and not any(ch.isalpha() for ch in answer)
        return Score(float(hit), hit)

    register(TaskSpec(name="counting_passkey", builder="passkey", haystack="counting", scorer="digits_only",
                      description="a passkey in counted sentences", max_new_tokens=8))
    instance = build_probe(embedded.tokenizer, ProbeSpec("counting_passkey", 400, 50, 3))
    assert instance.haystack == "counting" and "This is sentence" in instance.prompt
    assert abs(instance.prompt_tokens - 400) <= 4
    assert score("digits_only", instance.expected[0], instance.expected).correct
    assert not score("digits_only", f"The key is {instance.expected[0]}", instance.expected).correct
    outcome = last(run_probe(embedded, instance))
    assert outcome.instance.scorer == "digits_only" and isinstance(outcome.score.correct, bool)
    assert {"counting", "digits_only", "counting_passkey"} <= {
        kind["name"] for family in ("source", "scorer", "task") for kind in cmd_kinds(
            build_parser().parse_args(["kinds", "--family", family]))[family]}


def test_a_benchmark_faithful_task(embedded, registry, monkeypatch):
    from engines.probes import benchmarks
    from engines.probes.benchmarks.ruler import Sample

    def countdown(seed, settings, size, length, count_tokens):
        """A toy benchmark: numbers counted down from `size`, one missing; the answer is the missing one."""
        missing = 1 + seed % max(size, 1)
        listed = " ".join(str(n) for n in range(size, 0, -1) if n != missing)
        return Sample(f"Which number is missing?\n{listed}\nQuestion: which number from {size} down to 1 is missing?",
                      " Answer: the missing number is", (str(missing),))

    monkeypatch.setitem(benchmarks.SIZED, "toy_countdown", (countdown, (), "numbers", 2))
    register(TaskSpec(name="toy.countdown", builder="toy_countdown", haystack="noise", scorer="first_number",
                      description="a countdown with a gap", max_new_tokens=6, differs="a toy"))
    instance = build_probe(embedded.tokenizer, ProbeSpec("toy.countdown", 300, 50, 7))
    counted = len(embedded.tokenizer(instance.prompt, add_special_tokens=False).input_ids)
    assert counted == instance.prompt_tokens and 300 - 12 <= counted + 6 <= 300  # the largest size that fits
    size = int(instance.prompt.split("from ")[-1].split(" down")[0])
    assert instance.expected == (str(1 + 7 % size),) and instance.prompt.endswith(" Answer: the missing number is")
    assert isinstance(last(run_probe(embedded, instance)).score.correct, bool)


def test_a_gallery_card(embedded):
    """A card written as data runs through the gallery's own study, and its cells are the answers the
    probe gives on its own."""
    from services.gallery import Card, result_sentence, run_card
    from ui.figures import card_figures

    card = Card(name="toy-window", title="A toy", paper="none", claim="none", study="grid", tab="Sweep", differs="",
                settings={"task": "passkey", "lengths": [400], "depths": [0, 100], "seeds": [3],
                          "variants": [{"label": "default"}, {"label": "yarn x2", "rope": "yarn:2"}]})
    step = last(run_card(embedded, card, RunConfig()))
    assert step.done == step.total == 4 and len(card_figures(card.study, step.data)) == 1
    for row in step.data["rows"]:
        rope = RopeSpec.parse("yarn:2" if row["variant"] == "yarn x2" else "default")
        instance = build_probe(embedded.tokenizer, ProbeSpec("passkey", 400, row["depth"], 3))
        alone = last(run_probe(embedded, instance, "generate", RunConfig(rope=rope, max_new_tokens=16)))
        assert row["answer"] == alone.answer and row["correct"] == alone.score.correct
    assert result_sentence(card, step.data).startswith("Mean score: default ")


def test_registry_is_restored_between_tests():
    assert "runner_up" not in entries("decoding") and "even_keys" not in entries("mask")
    with pytest.raises(SpecError, match="Unknown decoding method 'runner_up'. Available: greedy"):
        dataclasses.replace(DecodingSpec(), method="runner_up")
