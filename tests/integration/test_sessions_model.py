"""Sessions with the embedded model: replays are identical, logging can be switched off, the CLI lists,
exports and imports sessions."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from gradio_client import Client

from engines.config.specs import RunConfig
from engines.studies.sweeps import SweepSpec
from services.replay import replay
from services.run_log import session_for
from services.sweep_jobs import open_job, run_job
from storage.db import Store

pytestmark = pytest.mark.model


def app(*args, env=None):
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          timeout=600, env=env)
    return done


def test_cli_runs_are_listed_replayed_exported_and_imported(tmp_path):
    free = json.loads(app("probe", "--context", "The capital of France is Paris.", "--question",
                          "What is the capital of France?", "--json").stdout)
    session_id = json.loads(app("sessions", "--json").stdout)["sessions"][0]["id"]
    task = json.loads(app("probe", "--task", "niah_single_1", "--length", "600", "--session", session_id,
                          "--json").stdout)
    listed = json.loads(app("sessions", "--session", session_id, "--json").stdout)
    assert {r["id"] for r in listed["runs"]} == {free["run_id"], task["run_id"]}
    for run_id in (free["run_id"], task["run_id"]):
        result = json.loads(app("replay", run_id, "--json").stdout)
        assert result["identical"] is True and result["differences"] == {}, result
    file = tmp_path / "session.json"
    assert json.loads(app("export", session_id, str(file), "--json").stdout)["runs"] == 4  # 2 runs + 2 replays
    imported = json.loads(app("import", str(file), "--json").stdout)
    assert imported["runs"] == 4 and imported["session_id"] != session_id
    (tmp_path / "bomb.json").write_text("[" * 100000 + "]" * 100000)
    bad = app("import", str(tmp_path / "bomb.json"))
    assert bad.returncode == 2 and "nests deeper" in bad.stderr and "Traceback" not in bad.stderr
    missing = app("replay", "no-such-run")
    assert missing.returncode == 2 and "No run with id 'no-such-run'" in missing.stderr


def test_logging_switched_off_writes_nothing(private_data_dir):
    env = os.environ | {"CONTEXT_LAB_LOGGING": "0"}
    out = json.loads(app("probe", "--task", "passkey", "--length", "500", "--json", env=env).stdout)
    assert out["run_id"] is None and out["correct"] is True
    store = Store()
    assert store.list_runs() == [] and store.list_sessions() == []
    log_to, session_id, state = session_for(store, {"id": None, "log": False})  # the UI toggle
    assert log_to is None and state["log"] is False and store.list_sessions() == []


def test_a_replayed_sweep_is_identical_cell_by_cell(embedded, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'lab.sqlite'}")
    job = open_job(store, store.new_session(), RunConfig(max_new_tokens=16),
                   SweepSpec("passkey", (400, 700), (0.0, 100.0)))
    list(run_job(job, store))
    summary = next(r for r in store.list_runs(kind="sweep"))
    result = replay(store, summary["id"])
    assert result["identical"] is True and result["replay_sweep_id"] != job.sweep_id
    cell = store.sweep_cells(job.sweep_id)[0]
    assert replay(store, cell["id"])["identical"] is True


def test_opening_a_stored_sweep_needs_no_model_and_is_fast(served_app):
    """A 100-cell sweep summary re-renders from stored data alone."""
    import time

    url, store = served_app
    rows = [{"length": n, "depth": float(d), "seed": 1, "key": f"{n}:{d}:1", "correct": (n + d) % 3 != 0,
             "score": 1.0, "answer": "a", "expected": ["a"], "prompt_tokens": n}
            for n in range(1000, 11000, 1000) for d in range(0, 100, 10)]
    session_id = store.new_session("stored sweep")
    spec = {"task": "passkey", "lengths": list(range(1000, 11000, 1000)), "depths": [float(d) for d in range(0, 100, 10)],
            "seeds": [1], "mode": "generate", "haystack": None, "params": {}}
    run_id = store.log_run(session_id, "sweep", {"model": {"model": "m"}}, {"sweep": spec},
                           {"cells": rows, "effective": {"rule": "85%", "threshold": 0.85}}, {})
    client = Client(url, verbose=False)
    started = time.perf_counter()
    shown, prompt, heat, curve, lengths, unused, table, cells = client.predict(run_id, api_name="/open_run")
    assert time.perf_counter() - started < 1.0
    assert shown["id"] == run_id and heat is not None and curve is not None and lengths is not None
    assert unused.get("visible") is False  # a sweep has three plots; the fourth slot stays hidden
    assert dict(table["data"])["kind"] == "sweep" and dict(table["data"])["id"] == run_id
    assert len(cells["value"]["data"]) == 100 and cells["value"]["data"][0][:3] == [1000, 0.0, 1]  # expanded
