"""Sweeps on the embedded model: shared-prefix answers equal plain runs, every cell saved at once,
resume after an interruption runs no cell twice, cancel stops between steps."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from gradio_client import Client

from engines.config.specs import RunConfig
from engines.probes.runner import run_probe
from engines.probes.tasks import build_probe
from engines.studies.sweeps import SweepSpec, build_cells, run_sweep
from services.sweep_jobs import open_job, run_job, sweep_summary
from storage.db import Store

pytestmark = pytest.mark.model

SPEC = SweepSpec("passkey", (400, 800), (0.0, 100.0), (1,))


def test_shared_prefix_answers_equal_plain_runs(embedded):
    spec = SweepSpec("niah_single_1", (400, 700), (0.0, 50.0, 100.0), (3,))
    cells = build_cells(embedded.tokenizer, spec, chat_template=True)
    shared = {r.cell.key: (r.outcome.answer, r.computed_tokens) for r in run_sweep(embedded, spec, cells)}
    assert len(shared) == 6
    for cell, _instance in cells:  # each cell again, alone, from an empty cache
        *_, plain = run_probe(embedded, build_probe(embedded.tokenizer, spec.probe_spec(cell)))
        assert shared[cell.key][0] == plain.answer, cell
    computed = [tokens for _, tokens in shared.values()]
    prompt_tokens = sum(instance.prompt_tokens for _, instance in cells)
    assert sum(computed) < 0.8 * prompt_tokens  # the prefix up to each needle was reused


def test_two_by_two_sweep_saves_every_cell_and_a_summary(embedded, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'lab.sqlite'}")
    job = open_job(store, store.new_session(), RunConfig(), SPEC)
    rows = list(run_job(job, store))
    assert job.status == "done" and len(rows) == 4 and {r["key"] for r in rows} == {c.key for c in SPEC.cells()}
    stored = store.sweep_cells(job.sweep_id)
    assert sorted(r["cell"] for r in stored) == sorted(c.key for c in SPEC.cells())
    assert all(r["kind"] == "sweep_cell" and r["prompt_hash"] and r["outputs"]["row"]["key"] == r["cell"] for r in stored)
    assert store.get_sweep(job.sweep_id)["status"] == "done"
    summary_runs = [r for r in store.list_runs() if r["kind"] == "sweep"]
    assert len(summary_runs) == 1 and summary_runs[0]["outputs"]["effective"]["effective_length"] in (400, 800, None)
    assert all(r["correct"] for r in rows)  # a short passkey grid is found everywhere


def test_a_sweep_over_time_limited_gpu_calls_runs_every_cell_once(embedded, monkeypatch):
    """Where one GPU call may run only so long (ZeroGPU), the cells go over several calls, with the answers of
    one call."""
    whole = open_job(None, "", RunConfig(), SPEC)
    answers = {r["key"]: r["answer"] for r in run_job(whole, None)}
    monkeypatch.setenv("CONTEXT_LAB_GPU_CALL_SECONDS", "0.01")  # every cell takes longer: one cell per call
    split = open_job(None, "", RunConfig(), SPEC)
    rows = list(run_job(split, None))
    assert whole.calls == 1 and split.calls == 4 and split.status == "done"
    assert {r["key"]: r["answer"] for r in rows} == answers


def test_interrupted_sweep_resumes_without_running_a_cell_twice(embedded, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'lab.sqlite'}")
    job = open_job(store, store.new_session(), RunConfig(), SPEC)
    running = run_job(job, store)
    first = [next(running), next(running)]
    running.close()  # the user pressed Cancel, or the server went away
    assert store.get_sweep(job.sweep_id)["status"] == "cancelled"
    assert len(store.sweep_cells(job.sweep_id)) == 2
    resumed = open_job(store, "", resume_id=job.sweep_id)
    assert [r["key"] for r in resumed.rows] == [r["key"] for r in first]
    rest = list(run_job(resumed, store))
    assert len(rest) == 2 and {r["key"] for r in rest}.isdisjoint({r["key"] for r in first})
    cells = store.sweep_cells(job.sweep_id)
    assert len(cells) == 4 and len({r["cell"] for r in cells}) == 4
    assert store.get_sweep(job.sweep_id)["status"] == "done"
    fresh = open_job(store, store.new_session(), RunConfig(), SPEC)
    again = {r["key"]: (r["answer"], r["correct"]) for r in run_job(fresh, store)}
    assert {r["key"]: (r["answer"], r["correct"]) for r in first + rest} == again  # the same grid


def test_cancel_stops_the_sweep_within_a_cell(embedded):
    spec = SweepSpec("passkey", (400,), (0.0, 50.0, 100.0))
    cells = build_cells(embedded.tokenizer, spec, chat_template=True)
    calls = []
    results = list(run_sweep(embedded, spec, cells, should_stop=lambda: len(calls) > 20 or calls.append(1)))
    assert len(results) < 3  # stopped inside the grid; the interrupted cell is not reported


def test_sweep_summary_marks_effective_length():
    rows = [{"length": n, "depth": d, "seed": 1, "correct": ok, "score": float(ok), "key": f"{n}:{d}:1"}
            for n, d, ok in [(1000, 0, True), (1000, 50, True), (1000, 100, True),
                             (2000, 0, True), (2000, 50, False), (2000, 100, True),
                             (4000, 0, False), (4000, 50, False), (4000, 100, True)]]
    summary = sweep_summary(rows)
    assert summary["effective"]["effective_length"] == 1000  # 2/3 < 85% of 1.0
    assert summary["u_curve"]["2000"]["primacy"] == pytest.approx(1.0)


def test_cli_sweep_prints_cells_and_resumes(tmp_path):
    env_args = [sys.executable, str(ROOT / "app.py"), "sweep", "--task", "passkey", "--lengths", "400,800",
                "--depths", "0,100", "--seeds", "2", "--json"]
    done = subprocess.run(env_args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["cells"]) == 4 and out["status"] == "done"
    assert {(c["length"], c["depth"], c["seed"]) for c in out["cells"]} == {(400, 0.0, 2), (400, 100.0, 2),
                                                                          (800, 0.0, 2), (800, 100.0, 2)}
    assert all(abs(c["prompt_tokens"] - c["length"]) <= 0.01 * c["length"] for c in out["cells"])
    assert "effective_length" in out and out["threshold"]["rule"].startswith("85%")
    again = subprocess.run([sys.executable, str(ROOT / "app.py"), "sweep", "--resume", out["sweep_id"], "--json"],
                           capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout)["cells"] == out["cells"]  # nothing left to run, the same grid
    summaries = [r for r in Store().list_runs(kind="sweep") if r["sweep_id"] == out["sweep_id"]]
    assert len(summaries) == 1  # and resuming a finished sweep added nothing
    bad = subprocess.run([sys.executable, str(ROOT / "app.py"), "sweep", "--resume", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "No sweep with id 'nope'" in bad.stderr


def test_cli_estimate_runs_nothing_and_counts_every_part(private_data_dir):
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "sweep", "--task", "passkey", "--lengths", "400,800",
                           "--depths", "0,50,100", "--b", "dtype=bf16", "--estimate", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["cells"] == 12 and 1 <= out["new_tokens_per_cell"] <= 16  # A and B; answers end before the budget
    parts = out["startup_seconds"] + out["model_load_seconds"] + out["cell_seconds"]
    assert out["estimated_seconds"] == pytest.approx(parts, abs=0.2) and out["cell_seconds"] > 0
    assert out["seconds_without_sharing"] >= out["cell_seconds"]
    assert not (private_data_dir / "lab.sqlite").exists()  # an estimate logs nothing


def test_sweep_tab_through_gradio_client(served_app):
    url, store = served_app
    client = Client(url, verbose=False)
    config = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 32, "default", "causal"]
    grid = ["passkey", "400,800", 2, "linear", "1", "generate", "preset", "{}", False, None, False,
            "smollm2-135m-instruct", "none", "fp32", True, ""]
    estimate = client.predict(*grid, *config, api_name="/sweep_estimate")
    assert "4 cells" in estimate
    status, table = client.predict(*grid, 0, "this process", *config, api_name="/sweep_run")[:2]
    assert "4/4 cells" in status
    assert len(table["data"]) == 4 and all(row[3] for row in table["data"])
    with_attention = grid[:1] + ["400"] + grid[2:8] + [True] + grid[9:]
    a_b = grid[:1] + ["400"] + grid[2:10] + [True, "smollm2-135m-instruct", "none", "auto", True, "cad:alpha=1"]
    client.predict(*a_b, 0, "this process", *config, api_name="/sweep_run")
    b_sweeps = [s for s in store.list_runs(kind="sweep") if s["config"]["decoding"]["method"] == "cad"]
    assert b_sweeps and b_sweeps[0]["outputs"]["cells"]  # B ran under context-aware decoding
    outputs = client.predict(*with_attention, 0, "this process", *config, api_name="/sweep_run")
    assert "2/2 cells" in outputs[0] and outputs[7] is not None  # the needle-mass heatmap
    cell = store.list_runs(kind="sweep_cell")[0]
    profile, mass = client.predict({"run_id": cell["id"]}, api_name="/sweep_cell_attention")
    assert profile is not None and mass is not None
    with pytest.raises(Exception, match="Click a cell of a logged sweep"):
        client.predict({}, api_name="/sweep_cell_attention")


def test_needle_attention_per_cell(embedded):
    spec = SweepSpec("passkey", (400, 700), (0.0, 100.0), needle_attention=True)
    cells = build_cells(embedded.tokenizer, spec, chat_template=True)
    rows = [result.row() for result in run_sweep(embedded, spec, cells)]
    assert len(rows) == 4 and all(0 < row["needle_mass"] < 1 for row in rows)
    plain = SweepSpec("passkey", (400,), (0.0,))
    assert SweepSpec.from_dict({k: v for k, v in plain.to_dict().items() if k != "needle_attention"}) == plain
