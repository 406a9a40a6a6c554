"""Writing finished runs to the store, shared by the UI handlers and the CLI (no gradio here)."""
from __future__ import annotations

import dataclasses
import logging

from sqlalchemy.exc import SQLAlchemyError

from engines.config.specs import RunConfig
from engines.decoding.generation import GenerationResult
from engines.model.loading import LoadedModel
from engines.probes.runner import ProbeOutcome
from engines.probes.tasks import ProbeSpec
from engines.studies.knob import find_knob
from services.visitors import session_to_log, with_visitor
from storage.db import StorageError, Store, logging_enabled, new_id

log = logging.getLogger("context_lab")


def log_generation(store: Store | None, session_id: str, kind: str, config: RunConfig,
                   loaded: LoadedModel, inputs: dict, result: GenerationResult,
                   extra: dict | None = None) -> str | None:
    """Log one free generation run; returns its id, or None when logging is off."""
    outputs = result.to_dict() | (extra or {})
    prompt = outputs.pop("prompt")
    return write_run(store, session_id, kind, config, loaded, inputs, outputs, prompt, seconds=result.seconds)


def session_for(store: Store | None, state: dict | None) -> tuple[Store | None, str, dict]:
    """The store to log into (None when this visitor switched logging off), the visitor's session id
    (created on first use) and the updated page state {"visitor", "id", "log"}. A run log that cannot
    be read or written here still gives an id: the run goes ahead and its save reports the problem."""
    state = with_visitor(state)
    if store is None or not state.get("log", True) or not logging_enabled():
        return None, state.get("id") or "", state
    try:
        session_id, state = session_to_log(store, state)
    except SQLAlchemyError as exc:
        log.warning("no session for this run: %s", exc)
        state["id"] = state.get("id") or new_id()
        return store, state["id"], state
    return store, session_id, state


def remember_upload(store: Store | None, spec: ProbeSpec, upload_text: str | None) -> ProbeSpec:
    """Store an uploaded haystack once and name it in the spec, so the run can be rebuilt later."""
    if upload_text is None or store is None or not logging_enabled():
        return spec
    try:
        digest = store.put_text(upload_text)
    except SQLAlchemyError as exc:  # the run goes ahead; saving it reports the problem
        log.warning("upload not stored: %s", exc)
        return spec
    return dataclasses.replace(spec, params=spec.params | {"_upload_sha256": digest})


def log_probe(store: Store | None, session_id: str, config: RunConfig, loaded: LoadedModel | dict,
              outcome: ProbeOutcome, kind: str = "probe", extra: dict | None = None, **columns) -> str | None:
    """Log a task probe: its spec (enough to rebuild the prompt), answer, score and timings."""
    summary = outcome.summary()
    outputs = summary | (extra or {}) | {
        "generation": outcome.generation.to_dict() if outcome.generation else None,
        "logprob_result": outcome.logprob.to_dict() if outcome.logprob else None}
    if outputs["generation"]:
        outputs["generation"].pop("prompt")
    inputs = {"probe": outcome.instance.spec.to_dict(), "mode": outcome.mode}
    return write_run(store, session_id, kind, config, loaded, inputs, outputs, outcome.instance.prompt,
                  task=outcome.instance.task, score=outcome.score.score, correct=outcome.score.correct,
                  seconds=summary.get("seconds"), **columns)


def write_run(store: Store | None, session_id: str, kind: str, config: RunConfig,
              loaded: LoadedModel | dict | None, inputs: dict, outputs: dict, prompt: str | None,
              **columns) -> str | None:
    """Write one run. `loaded` is the model it ran on, or that model's provenance when it ran in another
    process (a Ray worker). A database that cannot be written raises StorageError with a sentence saying
    what to change; the caller still has the result and shows it.
    """
    if store is None or not logging_enabled():
        return None
    if config.knob and isinstance(loaded, LoadedModel):  # the knob's layer and direction, kept with the run
        outputs = outputs | {"knob": find_knob(loaded).record(config.knob)}
    try:
        return store.log_run(session_id, kind, config.to_dict(), inputs, outputs,
                             loaded if isinstance(loaded, dict) else loaded.provenance() if loaded else {},
                             prompt=prompt, **columns)
    except Exception as exc:  # SQLAlchemy raises many kinds for a locked or read-only file
        log.warning("run not logged in %s: %s", store.url, exc)
        raise StorageError(f"The run finished but could not be saved to the run log ({type(exc).__name__}); "
                           "the answer is shown but not kept. The lab's operator should make its data "
                           "directory writable and not locked, or set CONTEXT_LAB_DATA to another directory.") from exc
