"""Sweeps: one task over context lengths x needle depths x seeds, run cell by cell.

Cells are run in order of needle position with one `PrefixCache`, so each cell computes only the
tokens past the prefix it shares with the cell before (the template head and the haystack up to the
needle); answers are those of plain per-cell runs.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.attention.function import AttentionCapture
from engines.attention.views import question_positions, span_mass, stacked
from engines.config.policy import limits
from engines.config.specs import RunConfig
from engines.context.run import run_state
from engines.decoding.generation import PrefixCache, common_prefix, encode
from engines.model.loading import LoadedModel
from engines.probes.haystack import HaystackError
from engines.probes.runner import SCORE_MODES, ProbeOutcome, run_probe
from engines.probes.tasks import ProbeInstance, ProbeSpec, build_probe, get_task

DEPTH_SPACINGS = ("linear", "sigmoid")


def check_cells(count: int, what: str | None = None) -> None:
    """A grid of `count` cells within the cap this lab allows (a public Space allows fewer)."""
    cap = limits().sweep_cells
    if count > cap:
        raise HaystackError(f"{what or f'This grid has {count} cells; it'} is more than a sweep holds here "
                            f"({cap} cells); choose fewer.")


def depth_grid(count: int, spacing: str = "linear") -> tuple[float, ...]:
    """`count` depths from 0 to 100; sigmoid spacing puts them closer together near both ends."""
    if spacing not in DEPTH_SPACINGS:
        raise HaystackError(f"Unknown depth spacing '{spacing}'. Choose linear or sigmoid.")
    if count < 1:
        raise HaystackError("Give at least one depth.")
    check_cells(count, f"{count} depths")  # refused on the count, before any list is built
    if count == 1:
        return (50.0,)
    steps = [i / (count - 1) for i in range(count)]
    if spacing == "sigmoid":
        squash = [1 / (1 + math.exp(-8 * (t - 0.5))) for t in steps]
        steps = [(s - squash[0]) / (squash[-1] - squash[0]) for s in squash]
    return tuple(round(100 * t, 2) for t in steps)


@dataclass(frozen=True)
class Cell:
    length: int
    depth: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.length}:{self.depth:g}:{self.seed}"


@dataclass(frozen=True)
class SweepSpec:
    """The grid: a task over lengths x depths x seeds, scored by generation or log-probability."""

    task: str
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    seeds: tuple[int, ...] = (1,)
    mode: str = "generate"
    haystack: str | None = None
    params: dict = field(default_factory=dict)
    needle_attention: bool = False  # capture each cell's question rows (no prefix sharing then)

    def __post_init__(self):
        get_task(self.task)
        if not self.lengths or any(not isinstance(n, int) or n < 1 for n in self.lengths):
            raise HaystackError("Give one or more lengths as whole numbers of tokens, e.g. 1000,2000.")
        if not self.depths or any(not 0 <= d <= 100 for d in self.depths):
            raise HaystackError("Give one or more depths between 0 and 100, e.g. 0,50,100.")
        if not self.seeds or any(not isinstance(s, int) for s in self.seeds):
            raise HaystackError("Give one or more whole-number seeds, e.g. 1,2.")
        if self.mode not in SCORE_MODES:
            raise HaystackError(f"Unknown scoring mode '{self.mode}'. Choose generate or logprob.")
        check_cells(len(self.lengths) * len(self.depths) * len(self.seeds))  # on the counts: no cell list yet

    def cells(self) -> list[Cell]:
        return [Cell(n, float(d), s) for n in self.lengths for d in self.depths for s in self.seeds]

    def probe_spec(self, cell: Cell) -> ProbeSpec:
        return ProbeSpec(self.task, cell.length, cell.depth, cell.seed, self.haystack, self.params)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSpec":
        data = dict(data)
        for key, kind in (("lengths", int), ("depths", float), ("seeds", int)):
            data[key] = tuple(kind(v) for v in data[key])
        return cls(**data)


@dataclass(frozen=True)
class CellResult:
    """One finished cell, flat enough to store, plot and compare."""

    cell: Cell
    outcome: ProbeOutcome
    computed_tokens: int  # prompt tokens actually run through the model for this cell
    needle_mass: float | None = None  # question rows' attention on the needles, mean over layers and heads

    def row(self) -> dict[str, Any]:
        summary = self.outcome.summary()
        return {"length": self.cell.length, "depth": self.cell.depth, "seed": self.cell.seed, "key": self.cell.key,
                "correct": summary["correct"], "score": summary["score"], "answer": summary["answer"],
                "expected": summary["expected"], "prompt_tokens": summary["prompt_tokens"],
                "seconds": summary.get("seconds"), "computed_tokens": self.computed_tokens,
                "needle_token_spans": summary["needle_token_spans"], "needle_mass": self.needle_mass}


def needle_position(instance: ProbeInstance) -> int:
    spans = instance.needle_token_spans
    return spans[0][0] if spans else instance.prompt_tokens


def build_cells(tokenizer, spec: SweepSpec, chat_template: bool, skip: set[str] = frozenset(),
                upload_text: str | None = None, max_tokens: int | None = None,
                transform=None) -> list[tuple[Cell, ProbeInstance]]:
    """Every cell not in `skip`, built (under `transform`, a TransformSpec) and ordered by seed, then by
    needle position."""
    built = [(cell, build_probe(tokenizer, spec.probe_spec(cell), chat_template, upload_text, max_tokens, transform))
             for cell in spec.cells() if cell.key not in skip]
    return sorted(built, key=lambda item: (item[0].seed, needle_position(item[1]), item[0].length))


def computed_spans(tokenizer, instances: list[ProbeInstance], mode: str) -> list[tuple[int, int]]:
    """(first computed token, end) per instance in order, as the prefix cache will run them."""
    spans, previous = [], []
    for instance in instances:
        ids = encode(tokenizer, instance.prompt)[0].tolist()
        extra = len(encode(tokenizer, instance.logprob_lead + instance.logprob_target)[0]) if mode == "logprob" else 0
        spans.append((min(common_prefix(previous, ids), len(ids) - 1), len(ids) + extra))
        previous = ids
    return spans


def run_sweep(loaded: LoadedModel, spec: SweepSpec, cells: list[tuple[Cell, ProbeInstance]],
              should_stop: Callable[[], bool] = lambda: False,
              config: RunConfig | None = None) -> Iterator[CellResult]:
    """Run the given cells in order, sharing prefixes; a cancelled cell is not yielded.

    `config` brings RoPE, mask and new-token budget (default: the task preset's budget)."""
    prefix = PrefixCache()
    for cell, instance in cells:
        if should_stop():
            return
        ids = encode(loaded.tokenizer, instance.prompt)[0].tolist()
        computed = len(ids) - min(common_prefix(prefix.ids, ids), len(ids) - 1)
        capture = AttentionCapture(question_positions(loaded.tokenizer, instance.prompt, instance.question),
                                   new_tokens=False) if spec.needle_attention else None
        *_, outcome = run_probe(loaded, instance, spec.mode, config, should_stop, prefix, capture)
        if outcome.generation is not None and outcome.generation.finish == "cancelled":
            return
        mass = None
        if capture is not None and instance.needle_token_spans:
            mass = float(torch.tensor(span_mass(stacked(capture), instance.needle_token_spans)).mean())
        yield CellResult(cell, outcome, computed, mass)


@dataclass(frozen=True)
class SpeedModel:
    """Seconds to prefill tokens [start, end) with `start` cached: a*(end-start) + b*(end^2-start^2)/2,
    plus `decode` seconds per new token. Fitted on the loaded model by `calibrate`."""

    linear: float
    quadratic: float
    decode: float

    def prefill(self, start: int, end: int) -> float:
        return self.linear * (end - start) + self.quadratic * (end * end - start * start) / 2


def calibration_documents(tokens: int) -> list[dict]:
    """Spans of 70-token documents between a 16-token prefix and a 16-token question, as `litm_qa`
    prompts have them: what a mask that needs documents is timed on."""
    return [{"kind": "document", "token_start": start, "token_end": min(start + 70, tokens - 16)}
            for start in range(16, tokens - 16, 70)]


@torch.inference_mode()
def calibrate(loaded: LoadedModel, config: RunConfig) -> SpeedModel:
    """Time two short prefills and a few decode steps on the loaded model under the config's RoPE and
    mask (about a second on a CPU; a mask that needs documents is timed on prompts made of them)."""
    from engines.decoding.cache import new_cache

    documents = config.mask.entry.needs_documents

    def state(count: int):
        return run_state(loaded.model, config.rope, config.mask, calibration_documents(count) if documents else None,
                         count)

    timings = {}
    with state(64):
        loaded.model(input_ids=torch.randint(100, 1000, (1, 64), device=loaded.device), logits_to_keep=1)  # warm-up
    for count in (256, 1024):
        ids = torch.randint(100, 1000, (1, count), device=loaded.device)
        cache = new_cache()
        with state(count):
            started = time.perf_counter()
            loaded.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            timings[count] = time.perf_counter() - started
    with state(1024):  # decode steps after the 1,024-token prompt
        loaded.model(input_ids=ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1)
        started = time.perf_counter()
        for _ in range(6):
            loaded.model(input_ids=ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1)
        decode = (time.perf_counter() - started) / 6
    # t(n) = a n + b n^2 / 2, solved from the two timings
    n1, n2, t1, t2 = 256, 1024, timings[256], timings[1024]
    quadratic = max(0.0, 2 * (t2 / n2 - t1 / n1) / (n2 - n1))
    linear = max(1e-7, t1 / n1 - quadratic * n1 / 2)
    return SpeedModel(linear, quadratic, decode)


def estimate_seconds(speed: SpeedModel, spans: list[tuple[int, int]], new_tokens: int) -> dict[str, float]:
    """Estimated seconds with prefix sharing and without it (every cell from scratch)."""
    shared = sum(speed.prefill(a, b) + speed.decode * new_tokens for a, b in spans)
    plain = sum(speed.prefill(0, b) + speed.decode * new_tokens for _, b in spans)
    return {"seconds": round(shared, 1), "seconds_without_sharing": round(plain, 1)}
