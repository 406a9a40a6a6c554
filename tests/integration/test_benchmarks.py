"""Benchmark-faithful tasks, built with the embedded model's tokenizer (no weights run): each template
against the text of RULER's released generators (NVIDIA/RULER scripts/data/synthetic/constants.py,
niah.py, variable_tracking.py, common_words_extraction.py, freq_words_extraction.py), written out
here; RULER's length accounting; the common-words property at 4K, 32K and 128K."""
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ROOT

from engines.probes.scorers import score
from engines.probes.tasks import ProbeSpec, build_probe, load_tasks

FAITHFUL = [name for name in load_tasks() if name.startswith("ruler.")]
NOISE_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def raw(tokenizer, task, length=2000, seed=1, depth=50.0):
    """The probe without the chat template: RULER's "base" template, the task text then its answer prefix."""
    return build_probe(tokenizer, ProbeSpec(task, length, depth, seed), chat_template=False)


def test_niah_single_reads_as_rulers_singular_template(tokenizer):
    probe = raw(tokenizer, "ruler.niah_single_1")
    key = re.search(r"What is the special magic number for (\S+) mentioned", probe.prompt).group(1)
    head = ("A special magic number is hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the number afterwards.\n")
    tail = (f"\nWhat is the special magic number for {key} mentioned in the provided text? "
            f"The special magic number for {key} mentioned in the provided text is")
    assert probe.prompt.startswith(head) and probe.prompt.endswith(tail)
    lines = probe.prompt[len(head):-len(tail)].split("\n")
    needles = [line for line in lines if line != NOISE_LINE]
    assert needles == [f"One of the special magic numbers for {key} is: {probe.expected[0]}."]
    assert re.fullmatch(r"[a-z]+(?:[- ][a-z]+)*-[a-zA-Z]+(?:[- ][a-zA-Z]+)*", key)  # adjective-noun
    assert re.fullmatch(r"\d{7}", probe.expected[0]) and probe.max_new_tokens == 128


def test_niah_multiquery_keeps_the_plural_template_and_lists_every_key(tokenizer):
    probe = raw(tokenizer, "ruler.niah_multiquery", 3000)
    assert probe.prompt.startswith("Some special magic numbers are hidden within the following text. Make sure to "
                                   "memorize it. I will quiz you about the numbers afterwards.\n")
    query = re.search(r"What are all the special magic numbers for (.+) mentioned in the provided text\?",
                      probe.prompt).group(1)
    keys = re.fullmatch(r"(\S+), (\S+), (\S+), and (\S+)", query).groups()
    assert probe.prompt.endswith(f" The special magic numbers for {query} mentioned in the provided text are")
    for key, value in zip(keys, probe.expected):
        assert f"One of the special magic numbers for {key} is: {value}." in probe.prompt
    assert len([s for s in probe.spans if s["kind"] == "needle"]) == 4


def test_niah_multikey_3_is_a_haystack_of_uuid_needles(tokenizer):
    probe = raw(tokenizer, "ruler.niah_multikey_3")
    lines = probe.prompt.split("\n")[1:-1]
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert len(lines) > 20 and all(re.fullmatch(f"One of the special magic uuids for {uuid} is: {uuid}.", line)
                                   for line in lines)
    assert probe.prompt.startswith("A special magic uuid is hidden within the following text.")


def test_essay_haystack_is_paul_graham_with_the_needle_between_sentences(tokenizer):
    probe = raw(tokenizer, "ruler.niah_single_2", 3000)
    needle = next(s for s in probe.spans if s["kind"] == "needle")
    text = probe.prompt
    assert "Paul Graham" in text or "startup" in text.lower()
    before = text[:needle["char_start"]]
    assert before.endswith(("\n", ". ", "? ", "! ", '." ', '?" ')) or before.rstrip().endswith((".", "?", "!"))


def test_depths_are_drawn_by_the_seed_and_the_depth_setting_does_not_apply(tokenizer):
    at = {seed: next(s for s in raw(tokenizer, "ruler.niah_single_1", seed=seed).spans if s["kind"] == "needle")
          ["char_start"] for seed in (1, 2, 3)}
    assert len(set(at.values())) == 3
    assert raw(tokenizer, "ruler.niah_single_1", depth=0).prompt == raw(tokenizer, "ruler.niah_single_1", depth=100).prompt


def test_vt_has_rulers_worked_example_then_the_task(tokenizer):
    probe = raw(tokenizer, "ruler.vt", 2500)
    intro = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    assert probe.prompt.startswith(intro) and probe.prompt.count(intro) == 2
    example, task = probe.prompt.split("\n\n" + intro)
    value = re.search(r"\nQuestion: Find all variables that are assigned the value (\d{5}) in the text above\. Answer:",
                      task).group(1)
    assert probe.prompt.endswith(f" Answer: According to the chain(s) of variable assignment in the text above, "
                                 f"5 variables are assigned the value {value}, they are: ")
    answer = example.rsplit("they are: ", 1)[1].split()
    assert len(answer) == 5 and all(re.fullmatch(r"[A-Z]{3}", name) for name in answer)  # the example's names
    chain = [f"VAR {probe.expected[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(probe.expected, probe.expected[1:])]
    assert [line for line in task.split("\n") if line.startswith("VAR ")] == chain  # in order, among noise lines
    assert all(re.fullmatch(r"[A-Z]{5}", name) for name in probe.expected) and probe.max_new_tokens == 30


def test_cwe_has_rulers_example_list_and_answer_format(tokenizer):
    probe = raw(tokenizer, "ruler.cwe", 5000)
    question = "Question: What are the 10 most common words in the above list?"
    prefix = " Answer: The top 10 words that appear most often in the list are:"
    head = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
            "that appear most often.\n")
    assert probe.prompt.startswith(head) and probe.prompt.endswith(question + prefix)
    example = probe.prompt.split("\n" + head)[0]
    answer = example.split(question + prefix + " ")[1]
    assert re.fullmatch(r"1\. .+ 2\. .+ 10\. .+", answer)
    entries = re.split(r"(?:^| )\d+\. ", example.split("\n")[1])[1:]
    assert len(entries) == 10 * 10 + 30 * 3  # 40 words at 4K and over: the common ten 10 times, the rest 3
    assert probe.max_new_tokens == 120


def test_fwe_template_and_answer(tokenizer):
    probe = raw(tokenizer, "ruler.fwe", 3000)
    assert probe.prompt.startswith("Read the following coded text and track the frequency of each coded word. Find the "
                                   "three most frequently appeared coded words. ")
    assert probe.prompt.endswith("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the "
                                 "three most frequently appeared words in the above coded text? Answer: According to "
                                 "the coded text above, the three most frequently appeared words are:")
    words = Counter(probe.prompt.split("coded words. ")[1].split("\nQuestion:")[0].split(" "))
    ranked = [w for w, _ in words.most_common(4)]
    assert ranked[0] == "..." and tuple(ranked[1:]) == probe.expected


@pytest.mark.parametrize("task", FAITHFUL)
def test_the_prompt_plus_rulers_new_tokens_fills_the_length(tokenizer, task):
    for length in (2000, 4096):
        probe = build_probe(tokenizer, ProbeSpec(task, length, 50, 1))
        counted = len(tokenizer(probe.prompt, add_special_tokens=False).input_ids)
        assert counted == probe.prompt_tokens and counted + probe.max_new_tokens <= length
        assert length - (counted + probe.max_new_tokens) < 0.03 * length, (task, length, counted)


def list_entries(text: str) -> list[str]:
    return re.split(r"(?:^|\s)\d+\. ", text)[1:]


@pytest.mark.parametrize("task", ["ruler.cwe", "cwe"])
@pytest.mark.parametrize("length", [4096, 32768, 131072])
def test_common_words_are_the_most_frequent_at_every_length(tokenizer, task, length):
    probe = build_probe(tokenizer, ProbeSpec(task, length, 50, 2), max_tokens=None)
    body = probe.prompt.rsplit("Question:" if task == "ruler.cwe" else "\n\nWhat are", 1)[0]
    if task == "ruler.cwe":
        body = body.rsplit("Memorize the ones that appear most often.\n", 1)[1]  # the task's list, not the example's
    counts = Counter(entry.strip() for entry in list_entries(body))
    common = [counts[word] for word in probe.expected]
    others = [n for word, n in counts.items() if word not in probe.expected]
    assert len(common) == 10 and min(common) > max(others), (task, length, min(common), max(others))


def test_string_match_all_is_rulers_metric():
    predictions = ["The numbers are 123 and 456.", "only 123", "nothing"]
    references = [["123", "456"], ["123", "789"], ["1"]]
    ruler = sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(predictions, references)) / 3 * 100
    lab = sum(score("string_match_all", p, ref).score for p, ref in zip(predictions, references)) / 3 * 100
    assert round(lab, 2) == round(ruler, 2) == 50.0


def test_build_prints_the_prompt_and_gold_answer_without_a_model():
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "build", "--task", "ruler.cwe", "--length", "131072",
                           "--seed", "3", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["prompt_tokens"] + out["max_new_tokens"] <= 131072 and out["prompt_tokens"] > 125_000
    assert len(out["expected"]) == 10 and all(word in out["prompt"] for word in out["expected"])
    assert out["differs"] and out["answer_prefix"].startswith(" Answer:")
    listing = json.loads(subprocess.run([sys.executable, str(ROOT / "app.py"), "tasks", "--json"], capture_output=True,
                                        text=True, timeout=120).stdout)
    assert {"ruler.qa_1", "ruler.qa_2", "nt.threading"} <= {u["name"] for u in listing["unavailable"]}
    assert all(t["differs"] for t in listing["tasks"])  # every preset says how it stands to its benchmark


@pytest.mark.parametrize("length,depth", [(2000, 10), (2000, 50), (8000, 90), (131072, 50)])
def test_kamradt_needle_moves_back_to_a_full_stop_within_l_minus_200(tokenizer, length, depth):
    probe = build_probe(tokenizer, ProbeSpec("kamradt.niah", length, depth, 1), max_tokens=None)
    needle = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
    system = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct"
    question = ("What is the best thing to do in San Francisco? Don't give information outside the document or "
                "repeat your findings")
    assert probe.prompt.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    assert probe.prompt.endswith(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    context = probe.prompt.split("<|im_start|>user\n")[1].removesuffix("<|im_end|>\n")
    before, after = context.split(needle)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    assert len(encode(context)) <= length - 200  # the package's final_context_length_buffer
    essays = encode(before + after)
    period = encode(".")
    at, target = len(encode(before)), int(len(essays) * depth / 100)
    assert at <= target + 1 and essays[at - 1] in period  # the token before the needle is a full stop
    assert not any(token in period for token in essays[at:target])  # and the last one before the depth
    assert (before + after).startswith("July 2010What hard liquor")  # addiction.txt, the first essay by name


def test_kamradt_multi_needle_spaces_the_needles_after_the_depth(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("kamradt.niah_multi", 6000, 40, 1))
    ingredients = [probe.prompt.find(f" {name} one of the secret ingredients") for name in
                   ("Figs are", "Prosciutto is", "Goat cheese is")]
    assert all(i > 0 for i in ingredients) and ingredients == sorted(ingredients)
    assert probe.expected == ("figs", "prosciutto", "goat cheese")
    assert "What are the secret ingredients needed to build the perfect pizza?" in probe.prompt


@pytest.mark.model
def test_benchmark_tab_fills_a_ruler_table_equal_to_its_stored_cells(served_app):
    from gradio_client import Client

    url, store = served_app
    config = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 32, "default", "causal", "greedy"]
    status, table, summary, csv_path = Client(url, verbose=False).predict(
        ["ruler.niah_single_1", "ruler.niah_multikey_2"], "800,1200", 2, *config, api_name="/benchmark_run")
    assert "8/8 cells" in status and "Effective length at 85.6" in summary
    assert table["headers"] == ["task", "800", "1200"] and [row[0] for row in table["data"]] == [
        "ruler.niah_single_1", "ruler.niah_multikey_2", "average"]
    cells = {}
    for run in store.list_runs(kind="sweep_cell"):
        row = store.get_run(run["id"])
        cells.setdefault((row["task"], row["outputs"]["row"]["length"]), []).append(row["score"])
    for task_row in table["data"][:2]:
        for length, shown in zip((800, 1200), task_row[1:]):
            scores = cells[(task_row[0], length)]
            assert len(scores) == 2 and shown == round(100 * sum(scores) / 2, 2)  # RULER: mean of partial scores
    average = table["data"][2][1:]
    assert average == [round((a + b) / 2, 2) for a, b in zip(table["data"][0][1:], table["data"][1][1:])]
    with open(csv_path) as f:
        assert f.read().splitlines()[0] == "task,800,1200"


@pytest.mark.model
def test_benchmark_cli_prints_the_table_as_csv(private_data_dir):
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "benchmark", "--tasks", "ruler.niah_single_1",
                           "--lengths", "800", "--samples", "1", "--csv"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    header, task, average = done.stdout.strip().split("\n")
    assert header == "task,800" and task.startswith("ruler.niah_single_1,") and average.startswith("average,")
    assert task.split(",")[1] == average.split(",")[1] and float(task.split(",")[1]) in (0.0, 100.0)


def test_landmark_passkey_lines_as_its_release_writes_them(tokenizer):
    probe = raw(tokenizer, "passkey.landmark", 3000, seed=4)
    task, before, line, after, question = probe.prompt.split("\n")
    key = probe.expected[0]
    assert task == ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                    "I will quiz you about the important information there.")
    garbage = " ".join([NOISE_LINE] * 2000)
    assert garbage.startswith(before) and garbage.startswith(after)  # both cut from the start of the noise
    assert line == f"The pass key is {key}. Remember it. {key} is the pass key."
    assert question == "What is the pass key? The pass key is" and probe.max_new_tokens == 10
    assert probe.prompt_tokens + 10 <= 3000 and 1 <= int(key) <= 50000
    assert score("first_number", f" {key}. The pass key is {key}.", (key,)).correct
    assert not score("first_number", f"7 or {key}", (key,)).correct


@pytest.mark.parametrize("depth,index", [(0, 0), (50, 37), (100, 74)])
def test_litm_kv_is_its_json_layout_with_the_asked_pair_at_the_depths_index(tokenizer, depth, index):
    probe = build_probe(tokenizer, ProbeSpec("litm.kv", 8000, depth, 2), chat_template=False)
    records = probe.prompt.split("JSON data:\n")[1].split("\n\nKey: ")[0]
    pairs = list(json.loads(records).items())
    written = "".join(("{" if i == 0 else " ") + f'"{k}": "{v}"' + (",\n" if i != len(pairs) - 1 else "}")
                      for i, (k, v) in enumerate(pairs))  # prompting.get_kv_retrieval_prompt's layout
    key, value = pairs[index]
    assert len(pairs) == 75 and records == written and probe.expected == (value,)
    assert probe.prompt == ("Extract the value corresponding to the specified key in the JSON object below.\n\n"
                            f"JSON data:\n{written}\n\nKey: \"{key}\"\nCorresponding value:")
    aware = build_probe(tokenizer, ProbeSpec("litm.kv", 8000, depth, 2, params={"query_aware": 1}), chat_template=False)
    assert aware.prompt.startswith("Extract the value corresponding to the specified key in the JSON object below.\n\n"
                                   f"Key: \"{key}\"\n\nJSON data:\n")


def test_litm_kv_keeps_its_size_and_says_what_length_it_needs(tokenizer):
    from engines.probes.haystack import HaystackError

    with pytest.raises(HaystackError, match="fixed size: its prompt takes .* choose a length of at least"):
        build_probe(tokenizer, ProbeSpec("litm.kv", 2000, 50, 1))


@pytest.mark.parametrize("variant", ["en", "en_reasoning"])
def test_counting_stars_sprinkles_its_32_counts_in_order_and_asks_for_json(tokenizer, variant):
    probe = raw(tokenizer, f"counting_stars.{variant}", 8000)
    true = [15, 117, 42, 69, 58, 107, 9, 49, 113, 66, 26, 102, 81, 94, 77, 61, 5, 19, 109, 3, 35, 54, 86, 89, 127, 21,
            46, 122, 38, 97, 74, 29]  # the release's context_data/a_stars.txt
    found = [int(n) for n in re.findall(r"this time (\d+) ★ was counted correctly" if variant == "en_reasoning"
                                        else r"The little penguin counted (\d+) ★\n", probe.prompt)]
    assert found == true
    what, which = ("correct ", "correctly counted") if variant == "en_reasoning" else ("", "counted")
    assert probe.prompt.endswith(
        "\n\n\n\nOn this moonlit and misty night, the little penguin is looking up at the sky and concentrating on "
        f"counting ★. Please help the little penguin collect the {what}number of ★, for example: {{\"little_penguin\": "
        f"[x, x, x,...]}}. The summation is not required, and the numbers in [x, x, x,...] represent the {which} "
        "number of ★ by the little penguin. Only output the results in JSON format without any explanation.")
    essay_words = len(re.sub(r"\nThe little penguin counted[^\n]*\n", " ", probe.prompt.split("\n\n\n\n")[0]).split(" "))
    assert abs(essay_words - int(0.8 * 8000)) <= 40  # 0.8 L words (each star's cut leaves a word boundary)


def test_counting_stars_scores_as_its_viz_notebook():
    refs = tuple(str(n) for n in (15, 117, 42, 69))
    assert score("counting_stars_searching", '```json\n{"little_penguin": [15, 117, 42, 69]}\n```', refs).score == 1.0
    assert score("counting_stars_searching", '{"little_penguin": [15, 15, 3, 42, 117, 69]}', refs).score == 0.5
    assert score("counting_stars_searching", "I counted [15, 117] stars", refs).score == 0.5
    pairs = ("15/16", "117/116")
    assert score("counting_stars_reasoning", '{"little_penguin": [15, 116]}', pairs).score == (1.0 + 0.25) / 2
    assert score("counting_stars_reasoning", '{"little_penguin": [15, 16]}', pairs).score == 0.5 / 2


def test_needle_threading_single_as_its_release_shows_an_item(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("nt.single", 3000, 100, 1), chat_template=False)
    haystack, question = probe.prompt.split("\nExtract the value")
    pairs = list(json.loads(haystack).items())
    assert haystack == "{" + ",\n".join(f'"{k}": "{v}"' for k, v in pairs) + "}"  # one pair per line, no spaces
    key, value = pairs[-1]  # depth 100: the last pair
    assert question == (f' corresponding to the specified key in the JSON object. Key: "{key}"\n Corresponding value: ')
    assert probe.expected == (value,) and probe.max_new_tokens == 100
    assert len(tokenizer(probe.prompt, add_special_tokens=False).input_ids) + 100 <= 3000


def test_litm_qa_is_its_template_with_the_gold_document_at_the_depths_index(tokenizer):
    probe = build_probe(tokenizer, ProbeSpec("litm.qa", 3000, 100, 2), chat_template=False)
    head = ("Write a high-quality answer for the given question using only the provided search results (some of which "
            "might be irrelevant).\n\n")
    assert probe.prompt.startswith(head) and probe.prompt.endswith(f"\n\n{probe.question}")
    lines = probe.prompt[len(head):].split("\n\nQuestion: ")[0].split("\n")
    assert [line.split("](")[0] for line in lines] == [f"Document [{i}" for i in range(1, 11)]
    gold = next(s for s in probe.spans if s["kind"] == "needle")
    assert probe.prompt[gold["char_start"]:gold["char_end"]] == lines[-1]  # depth 100: the last document
    assert any(answer in lines[-1] for answer in probe.expected)
    with pytest.raises(Exception, match="at most 16"):
        build_probe(tokenizer, ProbeSpec("litm.qa", 8000, 50, 1, params={"num_documents": 20}))
