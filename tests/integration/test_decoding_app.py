"""The Decoding tab driven through gradio_client: methods side by side, the knowledge-conflict set,
logging with the decoding setting, replay, and a sentence for bad settings."""
import pytest
from gradio_client import Client

from services.replay import replay

pytestmark = pytest.mark.model

CONFIG = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 16, "default", "causal", "greedy"]
CONTEXT = "After the 2031 referendum, the French government moved the national capital from Paris to Lyon."
QUESTION = "What is the capital of France? Answer with one word."


def test_methods_side_by_side_are_shown_and_logged(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    rows, tokens, alpha, alternatives, cad, prompt, status = client.predict(
        CONTEXT, QUESTION, "(free text: the context and question above)", 1000, 50, 1,
        "greedy\nbeam:num_beams=2\ncad:alpha=1", *CONFIG, api_name="/decode_compare")
    table = {row[0]: row for row in rows["data"]}
    assert set(table) == {"greedy", "beam:num_beams=2", "cad:alpha=1"}
    assert all(row[1] and row[5] in ("eos", "length") for row in table.values())
    assert [r[1] for r in alternatives["data"] if r[0] == "beam:num_beams=2"][:2] == ["beam 1", "beam 2"]
    assert cad["data"] and all(r[0] == "cad:alpha=1" for r in cad["data"]) and alpha is not None
    assert CONTEXT in prompt and tokens is not None
    run = store.get_run(table["cad:alpha=1"][6])
    assert run["config"]["decoding"] == {"method": "cad", "params": {"alpha": 1.0}}
    assert run["outputs"]["tokens"][0]["extra"]["alpha"] == 1.0
    assert run["outputs"]["text"] == table["cad:alpha=1"][1]
    assert replay(store, run["id"])["identical"]
    beam_run = store.get_run(table["beam:num_beams=2"][6])
    assert len(beam_run["outputs"]["details"]["beams"]) == 2


def test_a_haystack_probe_is_scored_under_each_method(served_app):
    url, _ = served_app
    client = Client(url, verbose=False)
    rows = client.predict("", "", "passkey", 600, 50, 1, "greedy\ncontrastive", *CONFIG,
                          api_name="/decode_compare")[0]
    assert [row[2] for row in rows["data"]] == [True, True]


def test_knowledge_conflict_set_runs_and_is_logged(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    plot, summary, rows = client.predict("greedy\ncad:alpha=1", 3, *CONFIG, api_name="/decode_conflicts")
    by_method = {row[0]: row for row in summary["data"]}
    assert set(by_method) == {"greedy", "cad:alpha=1"} and all(row[1] == 3 for row in by_method.values())
    assert len(rows["data"]) == 6
    logged = store.list_runs(kind="conflicts")
    assert logged and logged[0]["outputs"]["conflict_summary"][0]["items"] == 3


def test_bad_method_lines_come_back_as_a_sentence(served_app):
    url, _ = served_app
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=r"Method line 2 \(diverse_beam:num_beams=3,num_beam_groups=2\)"):
        client.predict(CONTEXT, QUESTION, "(free text: the context and question above)", 1000, 50, 1,
                       "greedy\ndiverse_beam:num_beams=3,num_beam_groups=2", *CONFIG, api_name="/decode_compare")
    with pytest.raises(Exception, match="Attention capture follows one sequence"):
        client.predict(CONTEXT, QUESTION, True, *CONFIG[:-1], "beam:num_beams=2", api_name="/probe")


def test_knob_curve_runs_in_the_served_app_and_is_logged_with_its_layer(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    plot, summary, rows = client.predict("greedy", "-2, 2", 2, *CONFIG, api_name="/decode_knob_curve")
    assert [row[:2] for row in summary["data"]] == [[-2.0, 2], [2.0, 2]] and len(rows["data"]) == 4
    assert plot is not None
    logged = store.list_runs(kind="knob_curve")[0]["outputs"]
    assert [share["knob"] for share in logged["knob_context_share"]] == [-2.0, 2.0]
    assert logged["knob"]["layer"] >= 1 and len(logged["knob"]["direction"]) == 576
    with pytest.raises(Exception, match="Knob values must be numbers"):
        client.predict("greedy", "-2, two", 2, *CONFIG, api_name="/decode_knob_curve")
