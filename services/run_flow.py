"""The run flow the Probe and Haystack tabs share: stream a model job, turn an attention capture into
its views, log the run, and report what happened (no gradio here)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engines.config.specs import ModelSpec
from engines.decoding.generation import TokenEvent
from engines.model.jobs import ModelJob
from engines.model.loading import MANAGER
from storage.db import StorageError


@dataclass(frozen=True)
class Streamed:
    """The answer so far, after the token with this index."""

    text: str
    index: int


@dataclass(frozen=True)
class Finished:
    """The run's result (a GenerationResult or ProbeOutcome), its logged attention views, its run id
    (None when not logged) and the run log's warning, if writing failed."""

    result: Any
    views: dict | None
    run_id: str | None
    warning: str | None


def run_logged(model: ModelSpec, job: ModelJob,
               views_of: Callable[[], dict] | None,
               log: Callable[[Any, dict | None], str | None]) -> Iterator[Streamed | Finished]:
    """Run `job` on the model (one job at a time; closing this iterator cancels it), then log its
    result with `log(result, extra)`; `views_of()` gives the capture's views once the run is over."""
    text = ""
    for item in MANAGER.stream(model, job):
        if not isinstance(item, TokenEvent):
            break
        text += item.text
        yield Streamed(text, item.index)
    views = views_of() if views_of is not None else None
    try:
        run_id, warning = log(item, {"attention": views} if views else None), None
    except StorageError as exc:  # the answer is still shown
        run_id, warning = None, str(exc)
    yield Finished(item, views, run_id, warning)
