"""Model work as data, and where it runs.

A `ModelJob` names a generator function defined at module level and its arguments; `ModelManager.stream`
calls it as function(loaded, *args, should_stop=..., **kwargs). Being data, it can cross a process boundary:
on a ZeroGPU Space (SPACES_ZERO_GPU set) a GPU is attached only inside a `spaces.GPU` call, which runs in a
worker process forked from this one, receives its arguments pickled and pickles back every item yielded.
There the job runs in such a call sized by the job (`gpu_call`), and an attention capture among its
arguments (`capture=`) comes back filled with every item that is not a token. Elsewhere the job runs in a
thread of this process, as it always did. Sweeps split their cells over calls (`call_limit_seconds`).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CALL_SECONDS = 120  # what one ZeroGPU call asks for unless CONTEXT_LAB_GPU_CALL_SECONDS says otherwise


@dataclass(frozen=True)
class ModelJob:
    """function(loaded, *args, should_stop=..., **kwargs), a generator; `function` must be importable by
    name (no lambda or local function), as pickle sends it by name to a GPU worker."""

    function: Callable[..., Iterator]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        for value in (self.function, *self.args, *self.kwargs.values()):
            if callable(value) and "<" in getattr(value, "__qualname__", ""):
                raise TypeError(f"A model job takes functions defined at module level, not {value.__qualname__}.")

    def run(self, loaded, should_stop: Callable[[], bool]) -> Iterator:
        return self.function(loaded, *self.args, should_stop=should_stop, **self.kwargs)

    @property
    def capture(self) -> Any:
        return self.kwargs.get("capture")


def model_job(function: Callable[..., Iterator], *args, **kwargs) -> ModelJob:
    return ModelJob(function, args, kwargs)


def returned(loaded, function: Callable, *args, should_stop: Callable[[], bool], **kwargs) -> Iterator:
    """The job of a plain function of the model: its one value."""
    yield function(loaded, *args, **kwargs)


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space, which sets SPACES_ZERO_GPU (the `spaces` package reads the same variable)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def call_limit_seconds() -> float | None:
    """The most one GPU call may run: CONTEXT_LAB_GPU_CALL_SECONDS, else 120 on ZeroGPU, else no limit."""
    chosen = os.environ.get("CONTEXT_LAB_GPU_CALL_SECONDS")
    if chosen:
        return float(chosen)
    return float(DEFAULT_CALL_SECONDS) if on_zero_gpu() else None


def call_seconds(estimate: float | None = None) -> int:
    """The duration a GPU call asks for: the job's estimate with half again for safety, at least 30 s, at most the
    limit (the whole limit when nothing was estimated)."""
    limit = call_limit_seconds() or DEFAULT_CALL_SECONDS
    return int(limit if estimate is None else min(limit, max(30.0, 1.5 * estimate)))


def in_gpu_call(spec, job: ModelJob, seconds: int) -> Iterator[tuple[Any, dict | None]]:
    """What runs inside the GPU call: the job on the model (the parent's, forked with the process; loaded here when
    the worker was forked before it), each item with the capture's state after items that are not tokens. The
    manager gets a lock of its own here: the parent's thread that held its lock at the fork is not in this process."""
    from engines.decoding.generation import TokenEvent
    from engines.model.loading import MANAGER

    MANAGER.lock = threading.RLock()
    loaded = MANAGER.get(spec)
    with closing(job.run(loaded, lambda: False)) as produced:  # closing the call closes the job
        for item in produced:
            synced = job.capture is not None and not isinstance(item, TokenEvent)
            yield item, (dict(vars(job.capture)) if synced else None)


def asked_seconds(spec, job: ModelJob, seconds: int) -> int:
    """The duration a call asks for, read by spaces.GPU from the call's own arguments."""
    return seconds


_spaces_decorated: Callable | None = None


def gpu_call(spec, job: ModelJob, seconds: int, gpu: Callable | None = None) -> Iterator:
    """The job's items from one GPU call asking for `seconds`; the parent's capture takes the worker's state as it
    comes. `gpu` gives a function a GPU: spaces.GPU unless another is given. Closing this iterator stops the
    worker's job after its next item."""
    global _spaces_decorated
    if gpu is None and _spaces_decorated is None:
        import spaces

        _spaces_decorated = spaces.GPU(duration=asked_seconds)(in_gpu_call)
    decorated = _spaces_decorated if gpu is None else gpu(duration=asked_seconds)(in_gpu_call)
    with closing(decorated(spec, job, seconds)) as items:
        for item, state in items:
            if state is not None:
                vars(job.capture).update(state)
            yield item
