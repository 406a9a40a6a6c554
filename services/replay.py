"""Re-running a stored run from what the log holds, and saying whether the result is identical.

Shared by the Sessions tab and the CLI (no gradio here). The replay is logged as a new run whose
inputs name the run it replays.
"""
from __future__ import annotations

from typing import Any

from engines.config.policy import limits
from engines.config.specs import RunConfig
from engines.decoding.generation import format_prompt
from engines.model.jobs import model_job
from engines.model.loading import MANAGER, Progress, no_progress
from engines.probes.runner import check_prompt_length, max_prompt_tokens, run_free, run_probe
from engines.probes.tasks import ProbeInstance, ProbeSpec, build_probe
from engines.studies.sift import MAX_CALLS, query_of, run_sift
from engines.studies.sweeps import SweepSpec
from services.run_log import log_generation, log_probe, write_run
from services.sweep_jobs import open_job, run_job
from storage.db import StorageError, Store

COMPARED = ("answer", "correct", "score", "prompt_tokens")


def _differences(old: dict, new: dict, fields) -> dict[str, Any]:
    return {f: {"stored": old.get(f), "now": new.get(f)} for f in fields if old.get(f) != new.get(f)}


def stored_probe(store: Store, run: dict, loaded, config: RunConfig) -> ProbeInstance:
    """The probe a logged task probe or sweep cell ran, rebuilt from its spec (and stored upload)."""
    spec = ProbeSpec.from_dict(run["inputs"]["probe"])
    upload_hash = spec.params.get("_upload_sha256")
    upload_text = store.get_text(upload_hash) if upload_hash else None
    return build_probe(loaded.tokenizer, spec, config.chat_template, upload_text, max_prompt_tokens(loaded),
                       config.transform)


def replay(store: Store, run_id: str, progress: Progress = no_progress,
           session_id: str | None = None) -> dict[str, Any]:
    """Run `run_id` again with its stored configuration; report identical and the differences. The
    replay is logged in `session_id` (default: the run's own session)."""
    run = store.get_run(run_id)
    if run is None:
        raise StorageError(f"No run with id '{run_id}'; python app.py sessions lists the runs.")
    config = RunConfig.from_dict(run["config"])
    limits().check_run(config)
    kind, inputs = run["kind"], run["inputs"]
    session_id = session_id or run["session_id"]
    if kind == "sweep":
        return _replay_sweep(store, run, config, session_id)
    loaded = MANAGER.get(config.model, progress)
    if "probe" in inputs:  # a task probe or a sweep cell: rebuilt from its spec
        instance = stored_probe(store, run, loaded, config)
        *_, outcome = MANAGER.stream(config.model, model_job(run_probe, instance, inputs["mode"], config))
        new_id = log_probe(store, session_id, config, loaded, outcome, extra={"replay_of": run_id})
        old = run["outputs"].get("row", run["outputs"])
        differences = _differences(old, outcome.summary(), COMPARED)
        prompt = instance.prompt
    elif kind == "probe":
        prompt = format_prompt(loaded.tokenizer, inputs["context"], inputs["question"], config.chat_template,
                               transform=config.transform)
        check_prompt_length(loaded, prompt)  # an imported run may be longer than this lab allows
        plain = format_prompt(loaded.tokenizer, "", inputs["question"], config.chat_template)
        *_, result = MANAGER.stream(config.model, model_job(run_free, prompt, config, plain_prompt=plain))
        new_id = log_generation(store, session_id, "probe", config, loaded, inputs | {"replay_of": run_id}, result)
        now = {"text": result.text, "token_ids": [t.token_id for t in result.tokens]}
        old = {"text": run["outputs"]["text"], "token_ids": [t["token_id"] for t in run["outputs"]["tokens"]]}
        differences = _differences(old, now, ("text", "token_ids"))
    elif kind == "sift":
        limits().check_calls(MAX_CALLS, inputs["budget"])
        check_prompt_length(loaded, query_of(inputs["context"], inputs["question"]))
        query = query_of(inputs["context"], inputs["question"])
        *_, result = MANAGER.stream(config.model, model_job(run_sift, query, config, inputs["budget"]))
        new_id = write_run(store, session_id, "sift", config, loaded, inputs | {"replay_of": run_id},
                           result.to_dict(), None)
        stored = run["outputs"]
        old = {"answer": stored["answer"], "resolved_at": stored["resolved_at"],
               "outputs": [stage["output"] for stage in stored["stages"]]}
        now = {"answer": result.answer, "resolved_at": result.resolved_at,
               "outputs": [stage.output for stage in result.stages]}
        differences = _differences(old, now, ("answer", "resolved_at", "outputs"))
        prompt = None
    else:
        raise StorageError(f"Runs of kind '{kind}' cannot be replayed.")
    if run["prompt"] is not None and prompt is not None and run["prompt"] != prompt:
        differences["prompt"] = {"stored": "(stored prompt)", "now": "the rebuilt prompt differs"}
    return {"run_id": run_id, "kind": kind, "identical": not differences, "differences": differences,
            "replay_run_id": new_id}


def _replay_sweep(store: Store, run: dict, config: RunConfig, session_id: str) -> dict[str, Any]:
    spec = SweepSpec.from_dict(run["inputs"]["sweep"])
    job = open_job(store, session_id, config, spec, label=f"replay of {run['sweep_id']}")
    for _ in run_job(job, store):
        pass
    old = {c["key"]: c for c in run["outputs"]["cells"]}
    differences = {}
    for cell in job.rows:
        changed = _differences(old.get(cell["key"], {}), cell, COMPARED)
        if changed:
            differences[cell["key"]] = changed
    return {"run_id": run["id"], "kind": "sweep", "identical": not differences, "differences": differences,
            "replay_sweep_id": job.sweep_id}
