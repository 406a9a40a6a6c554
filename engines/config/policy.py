"""What this deployment allows: private (a person's own machine, today's freedom) or public (a
shared Space: an operator's model allow-list and per-request caps). Read from the environment
once per call, so a test or an operator changes it without code. No heavy imports.

Public mode is on when SPACE_ID is set (Hugging Face sets it on every Space) or
CONTEXT_LAB_PUBLIC=1; CONTEXT_LAB_PUBLIC=0 turns it off even on a Space.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from engines.config.errors import SpecError
from engines.config.specs import EMBEDDED_MODEL, DecodingSpec, RunConfig


def public_mode() -> bool:
    forced = os.environ.get("CONTEXT_LAB_PUBLIC", "").strip().lower()
    if forced in ("0", "false", "off", "no"):
        return False
    return forced in ("1", "true", "on", "yes") or bool(os.environ.get("SPACE_ID"))


# The setting that multiplies a decoding method's work per step (beams, or candidates scored).
WIDTH_SETTINGS = {"beam": "num_beams", "diverse_beam": "num_beams", "contrastive": "top_k"}


@dataclass(frozen=True)
class Limits:
    """Per-request caps, each checked on a count before anything is built. `None`: no cap beyond
    what the model and the free memory allow."""

    prompt_tokens: int | None   # every entry point: free probes, haystacks, sweeps, SIFT, replays
    sweep_cells: int            # lengths x depths x seeds (x A/B configurations)
    new_tokens: int             # per generation call
    beams: int                  # num_beams of beam methods, beams x candidates for the others
    sift_calls: int             # model calls of one SIFT run or benchmark (problems x stages)
    file_mb: int                # one uploaded file (haystack text or session import)
    queued_jobs: int            # a visitor's jobs waiting or running at once

    def check_tokens(self, new_tokens: int, what: str = "Max new tokens") -> None:
        if new_tokens > self.new_tokens:
            raise SpecError(f"{what} is {new_tokens}; this lab allows at most {self.new_tokens} new tokens here. "
                            "Choose fewer.")

    def check_decoding(self, decoding: DecodingSpec) -> None:
        if decoding.method == "icn":  # several answers in turn: their tokens add up
            answers, each = decoding.params.get("answers", 5), decoding.params.get("answer_tokens", 12)
            self.check_tokens(answers * each, f"'{decoding.label}' writes up to {answers} x {each} tokens, which")
        setting = WIDTH_SETTINGS.get(decoding.method)
        width = decoding.params.get(setting, 0) if setting else 0
        if width > self.beams:
            raise SpecError(f"'{decoding.label}' keeps {width} {setting}; this lab allows at most {self.beams} "
                            "here. Choose fewer.")

    def check_calls(self, calls: int, budget: int) -> None:
        """A multi-call study (SIFT): `calls` model calls of at most `budget` new tokens each."""
        self.check_tokens(budget, "The budget per call")
        if calls > self.sift_calls:
            raise SpecError(f"This asks for up to {calls} model calls; this lab allows at most {self.sift_calls} "
                            "at once here. Choose fewer problems.")

    def check_run(self, config: RunConfig) -> None:
        """A run's configuration within the caps, and in public mode a model from the allow-list."""
        self.check_tokens(config.max_new_tokens)
        self.check_decoding(config.decoding)
        check_model(config.model.model)


PRIVATE = Limits(prompt_tokens=None, sweep_cells=2000, new_tokens=4096, beams=16, sift_calls=2000,
                 file_mb=64, queued_jobs=8)
PUBLIC_CPU = Limits(prompt_tokens=4096, sweep_cells=60, new_tokens=256, beams=4, sift_calls=40,
                    file_mb=5, queued_jobs=2)
PUBLIC_GPU = Limits(prompt_tokens=32768, sweep_cells=400, new_tokens=1024, beams=8, sift_calls=200,
                    file_mb=20, queued_jobs=3)


def _has_gpu() -> bool:
    if os.environ.get("SPACES_ZERO_GPU"):
        return True
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def limits() -> Limits:
    """The caps in force: private defaults, or the public CPU/GPU defaults, each overridden by
    CONTEXT_LAB_MAX_<FIELD> (e.g. CONTEXT_LAB_MAX_PROMPT_TOKENS=2048)."""
    base = (PUBLIC_GPU if _has_gpu() else PUBLIC_CPU) if public_mode() else PRIVATE
    changes = {}
    for item in fields(Limits):
        raw = os.environ.get(f"CONTEXT_LAB_MAX_{item.name.upper()}", "").strip()
        if raw:
            try:
                changes[item.name] = max(1, int(raw))
            except ValueError as exc:
                raise SpecError(f"CONTEXT_LAB_MAX_{item.name.upper()}={raw!r} is not a whole number.") from exc
    return Limits(**({f.name: getattr(base, f.name) for f in fields(Limits)} | changes))


def allowed_models() -> list[str]:
    """The models a visitor may choose in public mode: CONTEXT_LAB_MODELS (comma-separated), by
    default the embedded model."""
    listed = [m.strip() for m in os.environ.get("CONTEXT_LAB_MODELS", "").split(",") if m.strip()]
    return listed or [EMBEDDED_MODEL]


def check_model(model: str) -> None:
    if public_mode() and model not in allowed_models():
        raise SpecError("This Space serves only " + ", ".join(allowed_models()) + "; choose one of them "
                        "(other models and local paths run on your own copy of the lab).")
