"""Running a sweep as a job that saves every finished cell at once and can be resumed (no gradio).

Shared by the Sweep tab and the CLI. A job's cells are runs of kind `sweep_cell` tied to its sweep
record; resuming runs only the cells not stored yet. At the end a `sweep` summary run is logged.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from engines.config.specs import RunConfig
from engines.model.jobs import call_limit_seconds, model_job
from engines.model.loading import MANAGER, Progress, no_progress
from engines.probes.haystack import HaystackError
from engines.probes.runner import max_prompt_tokens, run_probe
from engines.probes.tasks import get_task
from engines.studies.sweep_stats import by_depth, by_length, effective_length, u_curve_indices
from engines.studies.sweeps import (
    CellResult,
    SweepSpec,
    build_cells,
    calibrate,
    check_cells,
    computed_spans,
    estimate_seconds,
    run_sweep,
)
from services.cluster import RayWorkers
from services.run_log import log_probe, write_run
from storage.db import StorageError, Store, logging_enabled, new_id

log = logging.getLogger("context_lab")


@dataclass
class SweepJob:
    sweep_id: str
    session_id: str
    spec: SweepSpec
    config: RunConfig
    rows: list[dict] = field(default_factory=list)  # finished cells, stored ones first
    upload_text: str | None = None
    status: str = "running"
    warning: str | None = None  # the run log could not be written: cells are shown, not kept
    calls: int = 0  # model calls its cells ran in here (more than one where a GPU call is limited in time)

    @property
    def total(self) -> int:
        return len(self.spec.cells())


def open_job(store: Store | None, session_id: str, config: RunConfig | None = None,
             spec: SweepSpec | None = None, resume_id: str | None = None, upload_text: str | None = None,
             label: str = "") -> SweepJob:
    """A new sweep (recorded at once), or the stored sweep `resume_id` with its finished cells."""
    saving = store is not None and logging_enabled()
    if resume_id:
        record = store.get_sweep(resume_id) if store else None
        if record is None:
            raise StorageError(f"No sweep with id '{resume_id}' in the run log; "
                               "check the id (python app.py sessions lists them).")
        spec, config = SweepSpec.from_dict(record["spec"]), RunConfig.from_dict(record["config"])
        upload_hash = record["spec"].get("params", {}).get("_upload_sha256")
        rows = [run["outputs"]["row"] for run in store.sweep_cells(resume_id)]
        return SweepJob(resume_id, record["session_id"], spec, config, rows,
                        store.get_text(upload_hash) if upload_hash else None)
    try:
        if upload_text is not None and saving:
            spec = SweepSpec.from_dict(spec.to_dict() | {"params": spec.params | {"_upload_sha256": store.put_text(upload_text)}})
        sweep_id = store.create_sweep(session_id, spec.to_dict(), config.to_dict(), label) if saving else new_id()
    except SQLAlchemyError as exc:  # the sweep still runs and shows its cells
        return SweepJob(new_id(), session_id, spec, config, [], upload_text, warning=unsaved(exc))
    return SweepJob(sweep_id, session_id, spec, config, [], upload_text)


def benchmark_jobs(store: Store | None, session_id: str, config: RunConfig, tasks: list[str], lengths: tuple[int, ...],
                   samples: int) -> list[SweepJob]:
    """One sweep per task for a benchmark table: its lengths x `samples` seeds (a faithful task draws its
    depths from the seed), each at the task's own new-token budget. Refused on the counts first."""
    if not tasks:
        raise HaystackError("Choose at least one task for the benchmark.")
    if samples < 1:
        raise HaystackError("Give at least one sample per task and length.")
    check_cells(len(tasks) * len(lengths) * samples, f"{len(tasks)} tasks x {len(lengths)} lengths x {samples} samples")
    return [open_job(store, session_id, dataclasses.replace(config, max_new_tokens=get_task(task).max_new_tokens),
                     SweepSpec(task, lengths, (50.0,), tuple(range(1, samples + 1))), label=f"benchmark {task}")
            for task in tasks]


def unsaved(exc: Exception) -> str:
    log.warning("sweep not logged: %s", exc)
    return (f"The run log cannot be written ({type(exc).__name__}): the cells are shown but not kept, and this "
            "sweep cannot be resumed.")


def prepare(job: SweepJob, progress: Progress = no_progress):
    """Load the model and build the cells still to run, in their running order."""
    loaded = MANAGER.get(job.config.model, progress)
    done = {row["key"] for row in job.rows}
    cells = build_cells(loaded.tokenizer, job.spec, job.config.chat_template, done, job.upload_text,
                        max_prompt_tokens(loaded), job.config.transform)
    return loaded, cells


def estimate(job: SweepJob, progress: Progress = no_progress) -> dict:
    """Seconds the remaining cells should take, from a short calibration on the loaded model. Answers
    stop at the end of sequence well before the budget, so the number of decode steps per cell is
    taken from the shortest cell answered for real (its own time is a second or two)."""
    loaded, cells = prepare(job, progress)
    new_tokens = 0
    speed = MANAGER.run(job.config.model, calibrate, job.config)
    if cells and job.spec.mode == "generate":
        shortest = min((instance for _, instance in cells), key=lambda instance: instance.prompt_tokens)
        *_, outcome = MANAGER.stream(job.config.model, model_job(run_probe, shortest, "generate", job.config))
        new_tokens = outcome.generation.new_tokens
    spans = computed_spans(loaded.tokenizer, [instance for _, instance in cells], job.spec.mode)
    return estimate_seconds(speed, spans, new_tokens) | {"cells": len(cells), "new_tokens_per_cell": new_tokens}


def local_results(job: SweepJob, progress: Progress = no_progress) -> Iterator[tuple[CellResult, dict]]:
    """The job's remaining cells run in this process, with prefix sharing across the cells of one call. Where a GPU
    call may run only so long (ZeroGPU), the cells go over several calls, each as many as the pace of the last
    one fits in the limit; every cell is saved as it comes, so a sweep cut short resumes where it stopped."""
    loaded, cells = prepare(job, progress)
    provenance = loaded.provenance()
    limit, start, per_cell = call_limit_seconds(), 0, None
    while start < len(cells):
        chunk = cells[start:start + cells_per_call(limit, per_cell, len(cells) - start)]
        began = time.perf_counter()
        for result in MANAGER.stream(job.config.model, model_job(run_sweep, job.spec, chunk, config=job.config),
                                     seconds=limit):
            yield result, provenance
        per_cell, start, job.calls = (time.perf_counter() - began) / len(chunk), start + len(chunk), job.calls + 1


def cells_per_call(limit: float | None, per_cell: float | None, left: int) -> int:
    """All `left` cells without a limit; else one first, then as many as fill 80% of the limit at `per_cell`
    seconds each (the last call's pace, its waiting for a GPU included)."""
    if limit is None:
        return left
    return min(left, 1 if per_cell is None else max(1, int(0.8 * limit / per_cell)))


def run_job(job: SweepJob, store: Store | None, progress: Progress = no_progress,
            workers: RayWorkers | None = None) -> Iterator[dict]:
    """Run the job's remaining cells (here, or on Ray `workers`), saving each as it finishes; yields each
    finished cell's row.

    Closing the iterator cancels the job before its next step and marks the sweep cancelled.
    """
    spec = job.spec
    stored = {row["key"] for row in job.rows}
    completed, provenance = False, None  # provenance: of the weights the cells ran on, once one has
    if job.warning or not logging_enabled():
        store = None
    results = workers.run(job) if workers else local_results(job, progress)
    try:
        with closing(results):
            for result, provenance in results:
                row = result.row()
                if row["key"] in stored:  # never twice, even if a resumed job overlaps
                    continue
                try:
                    log_probe(store, job.session_id, job.config, provenance, result.outcome, kind="sweep_cell",
                              extra={"row": row}, sweep_id=job.sweep_id, cell=row["key"])
                except StorageError as exc:
                    job.warning, store = unsaved(exc.__cause__ or exc), None
                stored.add(row["key"])
                job.rows.append(row)
                yield row
        completed = len(job.rows) == job.total
    finally:
        job.status = "done" if completed else "cancelled"
        if store is not None:
            try:
                store.set_sweep_status(job.sweep_id, job.status)
                if completed and provenance is not None:  # a finished sweep resumed again adds nothing
                    write_run(store, job.session_id, "sweep", job.config, provenance, {"sweep": spec.to_dict()},
                              sweep_summary(job.rows), None, task=spec.task, sweep_id=job.sweep_id,
                              score=sum(r["score"] for r in job.rows) / len(job.rows))
            except (SQLAlchemyError, StorageError) as exc:
                job.warning = unsaved(exc)


def sweep_summary(rows: list[dict], threshold: float | None = None, value: str = "correct") -> dict:
    """What the plots show: the U-curve indices per length and overall, and the effective length."""
    lengths = sorted({int(r["length"]) for r in rows})
    return {"cells": rows,
            "u_curve": {str(n): u_curve_indices(by_depth(rows, n, value)) for n in lengths}
            | {"all": u_curve_indices(by_depth(rows, None, value))},
            "effective": effective_length(by_length(rows, value), threshold)}


def parse_list(text: str, kind, what: str) -> tuple:
    """"1000,2000" -> (1000, 2000); a bad item raises HaystackError naming it. A list longer than a
    sweep can hold is refused on its separators, before it is split."""
    values = str(text).count(",") + str(text).count(";") + 1
    check_cells(values, f"A {what.lower()} list of {values} values")
    items = [item.strip() for item in str(text).replace(";", ",").split(",") if item.strip()]
    try:
        return tuple(kind(item) for item in items)
    except ValueError as exc:
        raise HaystackError(f"{what} must be a comma-separated list of numbers, e.g. 1000,2000; "
                            f"could not read '{text}'.") from exc
