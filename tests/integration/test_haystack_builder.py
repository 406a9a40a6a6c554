"""Haystack and probe building with the embedded model's own tokenizer (no weights needed)."""
import json
import re

import pytest

from engines.attention.views import question_positions
from engines.decoding.generation import format_prompt
from engines.probes.haystack import HaystackError, prose_sentences, read_upload
from engines.probes.tasks import ProbeSpec, build_probe, load_tasks

TASKS = list(load_tasks())
LAB_TASKS = [name for name in TASKS if "." not in name]  # the benchmark-faithful ones are sized their own way


def at_least(task: str, length: int) -> int:
    """`length`, or more for a task of fixed size (litm.kv's 75 pairs take about 5,500 tokens)."""
    return max(length, 6000) if task == "litm.kv" else length


def tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("task", LAB_TASKS)
@pytest.mark.parametrize("length", [1000, 2000, 4000])
def test_prompt_is_within_one_percent_of_the_target(tokenizer, task, length):
    for seed in (1, 2):
        probe = build_probe(tokenizer, ProbeSpec(task, length, 37, seed))
        independent = tokens(tokenizer, probe.prompt)  # counted again, apart from the builder
        assert independent == probe.prompt_tokens
        assert abs(independent - length) <= 0.01 * length, (task, seed, independent)
        assert probe.prompt_chars == len(probe.prompt)


@pytest.mark.parametrize("task", TASKS)
def test_builders_are_deterministic_per_seed(tokenizer, task):
    first, again = (build_probe(tokenizer, ProbeSpec(task, at_least(task, 1500), 30, 5)) for _ in range(2))
    other = build_probe(tokenizer, ProbeSpec(task, at_least(task, 1500), 30, 6))
    assert first.prompt == again.prompt and first.expected == again.expected and first.spans == again.spans
    # the NIAH test and Counting-Stars have no randomness: their seeds change nothing
    assert (other.prompt != first.prompt) != task.startswith(("kamradt.", "counting_stars.en"))


@pytest.mark.parametrize("task", [t for t, spec in load_tasks().items()  # answers written as they are listed
                                  if spec.builder != "cwe" and spec.scorer != "counting_stars_reasoning"])
def test_every_expected_answer_is_in_the_prompt(tokenizer, task):
    probe = build_probe(tokenizer, ProbeSpec(task, at_least(task, 1200), 60, 3))
    for answer in probe.expected:
        assert answer.lower() in probe.prompt.lower(), (task, answer)
    for span in probe.spans:
        decoded = tokenizer.decode(tokenizer(probe.prompt, add_special_tokens=False).input_ids[
            span["token_start"]:span["token_end"]])
        assert probe.prompt[span["char_start"]:span["char_end"]].strip() in decoded


@pytest.mark.parametrize("depth", [0, 10, 25, 50, 75, 90, 100])
def test_needle_sits_at_the_requested_depth_within_one_sentence(tokenizer, depth):
    probe = build_probe(tokenizer, ProbeSpec("passkey", 3000, depth, 4))
    hay = next(s for s in probe.spans if s["kind"] == "haystack")
    needle = next(s for s in probe.spans if s["kind"] == "needle")
    before = tokens(tokenizer, probe.prompt[hay["char_start"]:needle["char_start"]])
    after = tokens(tokenizer, probe.prompt[needle["char_end"]:hay["char_end"]])
    longest_sentence = 7  # the longest noise sentence, with its space, in this tokenizer
    assert abs(before - depth / 100 * (before + after)) <= longest_sentence
    assert before <= depth / 100 * (before + after) + 1  # moved back, never forward
    text_before = probe.prompt[hay["char_start"]:needle["char_start"]].rstrip()
    assert text_before == "" or text_before.endswith((".", "!", "?"))  # a sentence end


def test_the_question_and_needle_are_where_passkey_puts_them(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("passkey", 1000, 50, 9))
    key = probe.expected[0]
    assert probe.prompt.count(f"The pass key is {key}. Remember it. {key} is the pass key.") == 1
    assert "Find it and memorize it." in probe.prompt
    assert probe.prompt.rstrip().endswith("Answer with the number only.<|im_end|>\n<|im_start|>assistant")


def test_chat_template_gives_exactly_one_leading_bos(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("niah_single_2", 1000, 50, 1))
    ids = tokenizer(probe.prompt, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == probe.prompt.count(tokenizer.bos_token)
    raw = build_probe(tokenizer, ProbeSpec("niah_single_2", 1000, 50, 1), chat_template=False)
    assert tokenizer.bos_token_id not in tokenizer(raw.prompt, add_special_tokens=False).input_ids


def test_kv_haystack_is_valid_json_with_the_needle_inside(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("litm_kv", 2000, 40, 2))
    hay = next(s for s in probe.spans if s["kind"] == "haystack")
    data = json.loads(probe.prompt[hay["char_start"]:hay["char_end"]])
    assert probe.expected[0] in data.values() and len(data) > 20


def test_distractor_only_haystack_has_needles_of_the_same_shape(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("niah_multikey_2", 1500, 50, 1))
    hay = next(s for s in probe.spans if s["kind"] == "haystack")
    sentences = re.split(r"(?<=\.) ", probe.prompt[hay["char_start"]:hay["char_end"]])
    assert all(s.startswith("One of the special magic numbers for ") for s in sentences)
    assert sum(probe.expected[0] in s for s in sentences) == 1


def test_multidoc_gold_document_index_and_labels(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("litm_qa", 1500, 0, 2, params={"doc_index": 3}))
    gold = next(s for s in probe.spans if s["kind"] == "gold")
    assert probe.prompt[:gold["char_start"]].endswith("Document [4]")
    numbers = [int(n) for n in re.findall(r"Document \[(\d+)\]", probe.prompt)]
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_threads_run_in_the_chosen_direction(tokenizer, direction):
    probe = build_probe(tokenizer, ProbeSpec("nt_threading", 3000, 50, 1, params={"num_hops": 4,
                                                                                "direction": direction}))
    hops = sorted((s for s in probe.spans if s["kind"] == "needle"), key=lambda s: int(s["label"].split()[-1]))
    starts = [s["char_start"] for s in hops]  # in chain order: hop 1, hop 2, ...
    assert starts == sorted(starts, reverse=direction == "backward") and len(starts) == 4


def test_counting_stars_are_spread_evenly(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("counting_stars", 4000, 50, 1))
    starts = [s["token_start"] for s in probe.spans if s["kind"] == "needle"]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 8 and max(gaps) - min(gaps) < 60


def test_vt_chain_hops_point_back(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("vt", 2000, 20, 1))
    names = probe.expected
    assert re.search(rf"VAR {names[0]} = \d{{5}}\.", probe.prompt)
    for earlier, later in zip(names, names[1:]):
        assert f"VAR {later} = VAR {earlier}." in probe.prompt


def test_prose_comes_from_the_python_docs_and_essays():
    sentences = prose_sentences()
    assert len(sentences) > 1500  # about 35K tokens before the cycle repeats
    assert any("river" in s for s in sentences) and any("statement" in s for s in sentences)


@pytest.mark.parametrize("spec_kwargs, words", [
    ({"task": "nope", "length": 1000}, "Unknown task 'nope'. Available: passkey"),
    ({"task": "passkey", "length": 1000, "depth": 101}, "outside 0..100"),
    ({"task": "passkey", "length": 1000, "depth": -1}, "outside 0..100"),
    ({"task": "passkey", "length": 40}, "too short for 'passkey'"),
    ({"task": "passkey", "length": 1000, "haystack": "lava"}, "Unknown haystack 'lava'"),
    ({"task": "passkey", "length": 1000, "haystack": "upload"}, "needs a .txt or .md file"),
    ({"task": "nt_threading", "length": 1000, "params": {"direction": "sideways"}}, "is not one of forward, backward, random"),
    ({"task": "custom", "length": 1000, "params": {"needle": ""}}, "A custom needle needs needle"),
])
def test_bad_probe_settings_say_what_to_change(tokenizer, spec_kwargs, words):
    with pytest.raises(HaystackError, match=re.escape(words)):
        build_probe(tokenizer, ProbeSpec(**spec_kwargs))


def test_length_beyond_the_limit_is_refused(tokenizer):
    with pytest.raises(HaystackError, match="at most 2000"):
        build_probe(tokenizer, ProbeSpec("passkey", 5000), max_tokens=2000)


def test_uploaded_haystack(tokenizer, tmp_path):
    path = tmp_path / "mine.md"
    path.write_text("Lighthouses guide ships at night. Keepers once trimmed the wicks by hand. " * 20)
    probe = build_probe(tokenizer, ProbeSpec("custom", 1000, 50, 1, haystack="upload"), upload_text=read_upload(path))
    assert "Keepers once trimmed the wicks by hand." in probe.prompt and probe.haystack == "upload"
    assert "smoked paprika" in probe.prompt


@pytest.mark.parametrize("name, content, words", [
    ("empty.txt", b"", "is empty"),
    ("blob.txt", b"\x00\x01\x02binary", "does not look like UTF-8 text"),
    ("latin.txt", "caf\xe9".encode("latin-1"), "does not look like UTF-8 text"),
    ("page.html", b"<p>hi</p>", "not a .txt or .md file"),
])
def test_bad_uploads_are_refused(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(HaystackError, match=words):
        read_upload(path)


def test_oversize_upload_is_refused(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * (1 + 5 * 2**20 // 5))
    with pytest.raises(HaystackError, match="upload at most 5 MB"):
        read_upload(path)


@pytest.mark.parametrize("chat_template", [True, False])
@pytest.mark.parametrize("task", TASKS)
def test_question_rows_are_exactly_the_question(tokenizer, task, chat_template):
    """The rows captured as "the question" decode to the question itself, for every preset (litm_qa's
    answer prefix included) and with the chat template on or off: no template token, no word lost."""
    length = at_least(task, 1500) if "." in task else 900 if task == "cwe" else 600
    instance = build_probe(tokenizer, ProbeSpec(task, length, 50, 1), chat_template)
    ids = tokenizer(instance.prompt, add_special_tokens=False).input_ids
    rows = question_positions(tokenizer, instance.prompt, instance.question)
    assert rows == list(range(rows[0], rows[-1] + 1))
    assert tokenizer.decode([ids[i] for i in rows]).strip() == instance.question.strip()


def test_question_rows_of_a_free_prompt_whose_context_repeats_the_question(tokenizer):
    question = "What is the capital of France?"
    prompt = format_prompt(tokenizer, f"{question} Nobody asked. The capital of France is Paris.", question)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    rows = question_positions(tokenizer, prompt, question)
    assert tokenizer.decode([ids[i] for i in rows]).strip() == question
    assert rows[0] > 10  # the question after the context, not its copy inside it
