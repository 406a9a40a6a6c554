"""Long work a person waits for: an estimate before it starts, then progress with the time left.

Estimates come from a short calibration of the loaded model (engines.studies.sweeps.calibrate, about
a second on a CPU), kept per model and RoPE/mask setting for the life of the process."""
from __future__ import annotations

import json
import time

import gradio as gr

from engines.config.specs import RunConfig
from engines.model.loading import MANAGER, LoadedModel
from engines.studies.sweeps import SpeedModel, calibrate

_SPEEDS: dict[str, SpeedModel] = {}


def seconds_for(loaded: LoadedModel, config: RunConfig, prompts: list[int], new_tokens: int = 0) -> float:
    """Estimated seconds for one model pass over each prompt length in `prompts`, each followed by
    `new_tokens` decode steps."""
    key = json.dumps([config.model.to_dict(), loaded.device, config.rope.to_dict(), config.mask.to_dict()])
    if key not in _SPEEDS:
        _SPEEDS[key] = MANAGER.run(config.model, calibrate, config)
    speed = _SPEEDS[key]
    return sum(speed.prefill(0, tokens) + speed.decode * new_tokens for tokens in prompts)


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Clock:
    """Reports `done` of `total` steps to a gr.Progress with elapsed time and the time left (from the
    pace so far, or from `estimate` before the first step)."""

    def __init__(self, progress: gr.Progress, total: int, estimate: float | None = None):
        self.progress, self.total, self.estimate = progress, max(1, total), estimate
        self.started = time.perf_counter()
        progress(0, desc=f"about {duration(estimate)} (estimated)" if estimate is not None else "starting")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step(self, done: int, what: str = "done") -> None:
        elapsed = self.elapsed()
        left = (elapsed / done * (self.total - done) if done else
                max(0.0, (self.estimate or 0.0) - elapsed))
        self.progress(min(done, self.total) / self.total,
                      desc=f"{done}/{self.total} {what}, {duration(elapsed)} elapsed, about {duration(left)} left")
