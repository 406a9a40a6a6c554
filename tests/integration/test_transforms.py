"""Context transforms: Just Read Twice, the question sandwich, retrieval reordering and structurization,
applied to built prompts with every copy of the needles marked, sized to the asked length, logged with the
run and replayed; hard negatives among the documents."""
import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from engines.config.errors import HaystackError
from engines.config.specs import TransformSpec
from engines.probes.haystack import document, multidoc_set, split_sentences
from engines.probes.retrieval import bm25_scores
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

    a = RunConfig(transform=TransformSpec.parse("jrt:times=3"), knob=1.5)
    b = b_config(a, "gemma3-270m", "none", "auto", True, "")
    assert b.transform == a.transform and b.knob == 1.5 and b.model.model == "gemma3-270m"


def titles(prompt: str) -> list[str]:
    return re.findall(r"Document \[\d+\]\(Title: ([^)]*)\)", prompt)


def test_reorder_puts_documents_in_retrieval_order_numbered_anew(tokenizer):
    question = build_probe(tokenizer, ProbeSpec("litm_qa", 1500, 50, 1), True).question
    for order, best_first in (("score", lambda n: list(range(n))), ("reversed", lambda n: list(range(n))[::-1]),
                              ("ends", lambda n: [i for pair in zip(range(n), range(n - 1, -1, -1)) for i in pair][:n])):
        instance = build_probe(tokenizer, ProbeSpec("litm_qa", 1500, 50, 1), True,
                               transform=TransformSpec.parse(f"reorder:order={order}"))
        found = re.findall(r"Document \[(\d+)\](\(Title: [^)]*\)[^\n]*)", instance.prompt)
        assert [int(n) for n, _ in found] == list(range(1, len(found) + 1))  # numbered in their new order
        scores = bm25_scores(question, [text for _, text in found])
        ranked = [scores[i] for i in best_first(len(found))]  # by place: first, last, second, second last...
        assert ranked == sorted(ranked, reverse=True) and ranked[0] > ranked[-1]
        gold = next(s for s in instance.spans if s["kind"] == "gold")
        assert instance.prompt[gold["char_start"]:gold["char_end"]].startswith("(Title: Varnholt Bridge)")
        assert abs(instance.prompt_tokens - 1500) <= 15
    with pytest.raises(HaystackError, match="'reorder' orders documents, and the 'noise' haystack has none"):
        build_probe(tokenizer, ProbeSpec("passkey", 1500, 50, 1), True, transform=TransformSpec("reorder"))


def test_hard_negatives_are_the_documents_most_like_the_question(tokenizer):
    random_ = build_probe(tokenizer, ProbeSpec("litm_qa", 700, 50, 1), True)
    hard = build_probe(tokenizer, ProbeSpec("litm_qa", 700, 50, 1, params={"negatives": "hard"}), True)
    assets = {d["title"]: document(d["title"], d["text"]) for d in multidoc_set()["documents"]}
    scores = dict(zip(assets, bm25_scores(hard.question, list(assets.values()))))
    others = [t for t in titles(hard.prompt) if t != "Varnholt Bridge"]
    best = sorted((t for t in assets if t != "Varnholt Bridge"), key=lambda t: -scores[t])
    assert others[:3] == best[:3]  # the three asset documents most like the question lead
    mean = [sum(scores.get(t, 0) for t in ts) / len(ts) for ts in
            ([t for t in titles(p.prompt) if t != "Varnholt Bridge"] for p in (random_, hard))]
    assert mean[1] > mean[0]


def test_litm_qa_benchmark_takes_the_retrievers_best_as_distractors(tokenizer):
    instance = build_probe(tokenizer, ProbeSpec("litm.qa", 4000, 0, 1, params={"distractors": "retrieved"}), True)
    item = next(q for q in multidoc_set()["questions"] if q["question"] in instance.prompt)
    others = [d for d in multidoc_set()["documents"] if d["title"] != item["gold"]]
    scores = bm25_scores(item["question"], [document(d["title"], d["text"]) for d in others])
    best = [d["title"] for _, d in sorted(zip(scores, others), key=lambda pair: -pair[0])][:9]
    assert titles(instance.prompt) == [item["gold"], *best]


def test_structurize_keeps_every_sentence_and_marks_the_needle(tokenizer):
    plain = build_probe(tokenizer, ProbeSpec("passkey", 2000, 50, 1), True)
    instance = build_probe(tokenizer, ProbeSpec("passkey", 2000, 50, 1), True,
                           transform=TransformSpec.parse("structurize"))
    assert abs(instance.prompt_tokens - 2000) <= 20
    needle = [s for s in instance.spans if s["kind"] == "needle"]
    text = plain.prompt[plain.spans[1]["char_start"]:plain.spans[1]["char_end"]]
    points = re.findall(r"^\d+\.\d+\. (.*)$", instance.prompt, re.M)
    haystack = next(s for s in instance.spans if s["kind"] == "haystack")
    assert text in " ".join(points) and instance.prompt[:haystack["char_end"]].endswith(f". {points[-1]}")
    marked = instance.prompt[needle[0]["char_start"]:needle[0]["char_end"]]
    assert len(needle) == 1 and marked.startswith(split_sentences(text)[0]) and marked.endswith(split_sentences(text)[-1])
    assert re.sub(r"\n(\d+\. [^\n]*\n)?\d+\.\d+\. ", " ", marked) == text  # its points, perhaps a heading between


def test_cli_probe_reorders_and_structurizes_logs_and_replays():
    for transform in ("reorder:order=reversed", "structurize"):
        output = app("probe", "--task", "litm_qa", "--length", "1200", "--transform", transform)
        assert output["transform"] == transform
        assert app("replay", output["run_id"])["identical"]
    refused = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--context", "Some text.", "--question",
                              "Why?", "--transform", "reorder"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "orders the documents of a built haystack" in refused.stderr
