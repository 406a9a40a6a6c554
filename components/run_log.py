"""Writing finished runs to the store, shared by the UI handlers and the CLI (no gradio here)."""
from __future__ import annotations

import logging

from engines.generation import GenerationResult
from engines.models import LoadedModel
from engines.specs import RunConfig
from storage.db import Store, StorageError, logging_enabled

log = logging.getLogger("context_lab")


def log_generation(store: Store | None, session_id: str, kind: str, config: RunConfig,
                   loaded: LoadedModel, inputs: dict, result: GenerationResult, *,
                   task: str | None = None, score: float | None = None,
                   correct: bool | None = None, extra: dict | None = None) -> str | None:
    """Log one generation run; returns its id, or None when logging is off.

    A database that cannot be written raises StorageError with a sentence saying what to change;
    the result itself is never lost to the caller.
    """
    if store is None or not logging_enabled():
        return None
    outputs = result.to_dict() | (extra or {})
    prompt = outputs.pop("prompt")
    try:
        return store.log_run(session_id, kind, config.to_dict(), inputs, outputs, loaded.provenance(),
                             prompt=prompt, task=task, score=score, correct=correct,
                             seconds=result.seconds)
    except Exception as exc:  # SQLAlchemy raises many kinds for a locked or read-only file
        log.warning("run not logged: %s", exc)
        raise StorageError(f"The run finished but could not be saved to {store.url} ({type(exc).__name__}): "
                           "check that the data directory is writable and not locked, or set "
                           "CONTEXT_LAB_DATA to another directory.") from exc
