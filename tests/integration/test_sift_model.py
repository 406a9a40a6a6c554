"""SIFT on the embedded model (greedy): the stage flow and its accounting, the benchmark runner, the
tab through gradio_client and the CLI."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from gradio_client import Client

from engines.studies.sift import SiftResult, StageRecord, equivalent, problems, run_benchmark, run_sift
from services.replay import replay

pytestmark = pytest.mark.model
BUDGET = 96


def check_flow(records: list[StageRecord], result: SiftResult, query: str) -> None:
    assert [(r.stage, r.step) for r in records[:2]] == [("fallback", "solve"), ("stage 1", "sticker")]
    assert result.baseline_answer == records[0].answer
    assert all(query in r.prompt for r in records if r.step not in ("sticker_only", "inverse"))
    assert all(0 < r.new_tokens <= BUDGET and r.prompt_tokens > 0 and r.seconds >= 0 for r in records)
    assert result.tokens == sum(r.prompt_tokens + r.new_tokens for r in records)
    for stage in ("stage 1", "stage 2", "stage 3"):
        mine = [r for r in records if r.stage == stage]
        writers = [r for r in mine if r.step in ("sticker", "optimize")]
        solvers = [r.step for r in mine if r.step in ("sticker_only", "query_sticker")]
        if writers and writers[-1].sticker is not None:  # a parsed Sticker is checked by consensus
            assert solvers == ["sticker_only", "query_sticker"], stage
            alone, both = [r for r in mine if r.step in ("sticker_only", "query_sticker")]
            assert both.agrees == equivalent(alone.answer, both.answer)
        else:  # a malformed one skips the check
            assert solvers == [], stage
    agreed = [r for r in records if r.agrees]
    if agreed:
        assert records[-1] is agreed[0] and result.resolved_at == agreed[0].stage and result.answer == agreed[0].answer
    else:
        assert result.resolved_at == "fallback" and result.answer == records[0].answer
        assert {r.stage for r in records} == {"fallback", "stage 1", "stage 2", "stage 3"}


def test_stage_flow_on_two_problems(embedded):
    for item in problems()[:2]:
        *records, result = run_sift(embedded, item["question"], budget=BUDGET)
        assert isinstance(result, SiftResult)
        check_flow(records, result, item["question"])


def test_benchmark_runner_on_two_items(embedded):
    rows = list(run_benchmark(embedded, limit=2, budget=BUDGET))
    assert [row["item"] for row in rows] == [0, 1]
    for row, item in zip(rows, problems()):
        assert row["gold"] == item["answer"]
        assert row["sift_correct"] == equivalent(row["sift_answer"], item["answer"])
        assert row["baseline_correct"] == equivalent(row["baseline_answer"], item["answer"])
        assert row["sift_tokens"] > row["baseline_tokens"] > 0
        assert row["resolved_at"] in ("stage 1", "stage 2", "stage 3", "fallback")


@pytest.mark.slow
def test_sift_tab_through_gradio_client(served_app):
    """About two minutes (slow: the browser test drives the same tab, the CLI tests the logging); run
    with -m slow."""
    url, store = served_app
    client = Client(url, verbose=False)
    config = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 32, "default", "causal", "greedy"]
    answer, timeline, stages, sticker, attention, picked, status = client.predict(
        "", problems()[3]["question"], BUDGET, True, *config, api_name="/sift")
    assert "resolved at:" in answer and timeline is not None
    steps = [row[2] for row in stages["data"]]
    assert steps[:2] == ["solve", "sticker"]
    run = store.list_runs(kind="sift")[0]
    assert [s["step"] for s in run["outputs"]["stages"]] == steps
    if sticker:  # the attention view needs a parsed Sticker
        assert sticker.startswith("Conditions:\n1. ") and attention is not None
        assert 0 < run["outputs"]["sticker_attention"]["sticker_mass"] < 1
    assert replay(store, run["id"])["identical"]  # greedy: the same stages and answer again
    summary, plot, rows = client.predict(1, BUDGET, *config, api_name="/sift_benchmark")
    assert summary["items"] == 1 and len(rows["data"]) == 1
    assert store.list_runs(kind="sift_benchmark")[0]["outputs"]["summary"]["items"] == 1


def test_cli_sift_benchmark_prints_the_figures():
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "sift", "--benchmark", "--limit", "1", "--budget",
                           str(BUDGET), "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["items"] == 1 and set(out["resolved_share"]) == {"stage 1", "stage 2", "stage 3", "fallback"}
    assert out["rows"][0]["gold"] == problems()[0]["answer"] and out["sift_tokens_per_item"] > 0
