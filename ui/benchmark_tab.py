"""Benchmark tab: the benchmark-faithful tasks over lengths, reported as RULER reports them (a table of
tasks x lengths averaged per its rules, the effective length at 85.6), filling cell by cell, as CSV."""
from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path

import gradio as gr
import pandas as pd

from engines.config.errors import LabError
from engines.probes.tasks import load_tasks
from engines.studies.benchmark import RULES, benchmark_table, table_csv, table_rows
from services.run_log import session_for
from services.sweep_jobs import SweepJob, benchmark_jobs, parse_list, run_job
from storage.db import Store
from ui.model_panel import ConfigInputs, Panel, describe_loaded
from ui.sweep import status_line
from ui.text import Refusal

DEFAULT_TASKS = ["ruler.niah_single_1", "ruler.niah_multikey_2", "ruler.vt"]


def shown(jobs: list[SweepJob]) -> tuple[pd.DataFrame, str]:
    """The table so far, and a line under it: the average and the effective length."""
    table = benchmark_table({job.spec.task: job.rows for job in jobs})
    header, *rows = table_rows(table)
    effective = table["effective_length"]
    summary = (f"Effective length at {table['threshold']}: **{effective if effective is not None else 'none'}** "
               f"(average by length: {', '.join(f'{n}: {v}' for n, v in table['average'].items() if v is not None)})")
    return pd.DataFrame(rows, columns=[str(h) for h in header]), summary


def run(store: Store | None, tasks, lengths, samples, state, *values, progress=gr.Progress()):
    """Open one sweep per task in the run log and run them, redrawing the table after each cell."""
    try:
        config = Panel.of(values).config()
        if samples is None or int(samples) != samples:
            raise Refusal("Samples must be a whole number, e.g. 3.")
        log_to, session_id, state = session_for(store, state)
        jobs = benchmark_jobs(log_to, session_id, config, list(tasks or []), parse_list(lengths, int, "Lengths"),
                              int(samples))
    except LabError as exc:
        raise Refusal(str(exc)) from exc
    started, done, total = time.perf_counter(), 0, sum(job.total for job in jobs)
    yield status_line(jobs, started, 0, None), *shown(jobs), None, state
    try:
        for job in jobs:
            for _ in run_job(job, log_to):
                done += 1
                progress((done, total), desc="cells")
                yield status_line(jobs, started, done, None), *shown(jobs), None, state
    except LabError as exc:
        raise Refusal(str(exc)) from exc
    path = Path(tempfile.mkdtemp()) / "context-lab-benchmark.csv"
    path.write_text(table_csv(benchmark_table({job.spec.task: job.rows for job in jobs})))
    yield status_line(jobs, started, done, None) + " | " + describe_loaded(), *shown(jobs), str(path), state


def build(config: ConfigInputs, store: Store | None, session: gr.State) -> None:
    with gr.Tab("Benchmark", id="benchmark"):
        gr.Markdown("Tasks reproduced from their benchmarks' released code (names with a dot), over lengths, "
                    "reported as RULER reports them. " + RULES)
        with gr.Row():
            tasks = gr.Dropdown(list(load_tasks()), value=DEFAULT_TASKS, multiselect=True, label="Tasks", scale=3)
            lengths = gr.Textbox("1000,2000", label="Lengths (tokens, new tokens included)")
            samples = gr.Number(2, precision=0, minimum=1, label="Samples per task and length")
        with gr.Row():
            run_button = gr.Button("Run benchmark", variant="primary", elem_id="benchmark-run")
            cancel = gr.Button("Cancel", variant="stop")
        status = gr.Markdown("Choose tasks and lengths and press **Run benchmark**.")
        table = gr.Dataframe(label="Score x 100 by task and length", interactive=False)
        summary = gr.Markdown()
        csv_file = gr.File(label="The table as CSV", interactive=False)
    event = run_button.click(partial(run, store), [tasks, lengths, samples, session, *config.all()],
                             [status, table, summary, csv_file, session], api_name="benchmark_run",
                             concurrency_id="model")
    cancel.click(None, cancels=[event], api_name=False)
