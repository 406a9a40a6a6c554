"""Sweeps on a real local Ray cluster of two workers on the embedded model, logged to PostgreSQL: the
same cells as in-process, a worker killed mid-sweep, a driver killed and resumed, the UI's choice."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, empty_postgres, serving
from gradio_client import Client

from engines.config.specs import RunConfig
from engines.probes.tasks import get_task
from engines.studies.sweeps import SweepSpec
from services.cluster import shared_workers
from services.sweep_jobs import open_job, run_job
from storage.db import Store

pytest.importorskip("ray")
pytestmark = pytest.mark.model

SPEC = SweepSpec("niah_single_1", (400, 700), (0.0, 25.0, 50.0, 75.0, 100.0), (1,))
CONFIG = RunConfig(max_new_tokens=get_task("niah_single_1").max_new_tokens)  # the task's budget, as the CLI and UI use


@pytest.fixture(scope="module")
def workers():
    os.environ["CONTEXT_LAB_RAY_WORKERS"] = "2"  # the lab server's pool, as an operator asks for one
    pool = shared_workers()
    yield pool
    pool.close()
    del os.environ["CONTEXT_LAB_RAY_WORKERS"]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """SPEC's answers swept in this process, by cell key."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('local') / 'lab.sqlite'}")
    job = open_job(store, store.new_session(), CONFIG, SPEC)
    return answers(run_job(job, store))


def answers(rows) -> dict:
    """Each cell's answer (as far as the Sweep tab's table shows it), correctness and score, by key."""
    return {row["key"]: (str(row["answer"])[:80], row["correct"], row["score"]) for row in rows}


def test_ray_sweep_equals_the_in_process_sweep_cell_for_cell(workers, in_process):
    store = Store(empty_postgres())
    job = open_job(store, store.new_session(), CONFIG, SPEC)
    rows = list(run_job(job, store, workers=workers))
    assert answers(rows) == in_process and job.status == "done"
    cells = store.sweep_cells(job.sweep_id)
    assert sorted(c["cell"] for c in cells) == sorted(in_process)
    assert {c["environment"]["model_source"] for c in cells} == {c["environment"]["model_source"] for c in cells[:1]}
    assert len(set(workers.pids())) == 2 and os.getpid() not in workers.pids()
    summary = [r for r in store.list_runs(kind="sweep") if r["sweep_id"] == job.sweep_id]
    assert len(summary) == 1 and store.get_sweep(job.sweep_id)["status"] == "done"


def test_a_killed_worker_loses_no_cell_and_its_cells_go_to_the_other(workers, in_process):
    store = Store(empty_postgres())
    job = open_job(store, store.new_session(), CONFIG, SPEC)
    running = run_job(job, store, workers=workers)
    first = next(running)
    victim = workers.pids()[1]
    os.kill(victim, signal.SIGKILL)
    rows = [first, *running]
    assert len(workers.actors) == 1 and victim not in workers.pids()
    assert answers(rows) == in_process and job.status == "done"
    cells = [c["cell"] for c in store.sweep_cells(job.sweep_id)]
    assert sorted(cells) == sorted(in_process)  # each cell stored once
    workers.top_up("auto")  # the next sweep has two workers again
    assert len(set(workers.pids())) == 2


def test_a_driver_killed_mid_sweep_resumes_on_the_cluster(workers, in_process):
    url = empty_postgres()
    env = os.environ | {"CONTEXT_LAB_DATABASE_URL": url}
    env.pop("CONTEXT_LAB_RAY_WORKERS")
    sweep = [sys.executable, str(ROOT / "app.py"), "sweep", "--executor", "ray", "--workers", "2", "--json"]
    driver = subprocess.Popen([*sweep, "--task", "niah_single_1", "--lengths", "400,700", "--depths", "0,25,50,75,100"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    store, deadline = Store(url), time.time() + 300
    while time.time() < deadline and len(store.list_runs(kind="sweep_cell")) < 2:
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local cluster it started
    driver.wait(30)
    sweep_id = store.list_runs(kind="sweep_cell")[0]["sweep_id"]
    kept = {c["cell"] for c in store.sweep_cells(sweep_id)}
    assert 2 <= len(kept) < 10 and store.get_sweep(sweep_id)["status"] == "running"
    done = subprocess.run([*sweep, "--resume", sweep_id], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "done" and out["executor"] == "ray, 2 workers"
    assert answers(c | {"key": f"{c['length']}:{c['depth']:g}:{c['seed']}"} for c in out["cells"]) == in_process
    cells = [c["cell"] for c in store.sweep_cells(sweep_id)]
    assert sorted(cells) == sorted(in_process) and kept <= set(cells)


def test_the_sweep_tab_runs_on_the_cluster_when_one_is_offered(workers, in_process):
    store = Store(empty_postgres())
    with serving(store) as (url, _):
        client = Client(url, verbose=False)
        config = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 32, "default", "causal"]
        status, table, *_ = client.predict("niah_single_1", "400,700", 5, "linear", "1", "generate", "preset", "{}",
                                           False, None, False, "", "none", "auto", True, "", 0, "Ray cluster",
                                           *config, api_name="/sweep_run")
    assert "10/10 cells" in status
    assert answers(dict(zip(table["headers"], row)) for row in table["data"]) == in_process
    assert len(store.list_runs(kind="sweep_cell")) == 10
