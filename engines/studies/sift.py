"""SIFT (Stick to the Facts): the model restates a problem as a Sticker (numbered conditions and one
question), answers from the Sticker alone and from the problem plus the Sticker, and accepts an
answer only when the two agree; otherwise it refines the Sticker (forward optimisation, then inverse
generation from a solution) and finally falls back to the plain answer.

Stages are yielded as they finish (`StageRecord`), then a `SiftResult`; no UI here.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache

from engines.config.paths import ASSETS
from engines.config.specs import DecodingSpec, RunConfig
from engines.context.run import run_state
from engines.decoding.generation import GenerationResult, encode, format_prompt
from engines.model.loading import LoadedModel
from engines.probes.runner import decoded

RESOLUTIONS = ("stage 1", "stage 2", "stage 3", "fallback")


@lru_cache(maxsize=1)
def prompts() -> dict[str, str]:
    return json.loads((ASSETS / "sift_prompts.json").read_text())


@lru_cache(maxsize=1)
def problems() -> tuple[dict, ...]:
    return tuple(json.loads((ASSETS / "sift_problems.json").read_text())["items"])


def fill(template: str, **values: str) -> str:
    """The prompt with {name} fields filled (plain replacement: braces in user text stay as they are)."""
    text = prompts()[template]
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


# ---- the Sticker

@dataclass(frozen=True)
class Sticker:
    conditions: tuple[str, ...]
    question: str

    def render(self) -> str:
        lines = [f"{i}. {c}" for i, c in enumerate(self.conditions, 1)]
        return "Conditions:\n" + "\n".join(lines) + f"\nQuestion: {self.question}"


def parse_sticker(text: str) -> Sticker | None:
    """The numbered conditions and the first Question line of a model's Sticker; None when either
    is missing (a malformed Sticker: its stage is skipped, as the method prescribes)."""
    conditions, question = [], None
    for line in (text or "").splitlines():
        numbered = re.match(r"\s*(?:\d+[.)]|[-*])\s+(.+)", line)
        asked = re.match(r"\s*\**question\**\s*:\s*(.+)", line, re.IGNORECASE)
        if asked and question is None:
            question = asked.group(1).strip()
        elif numbered and question is None:
            conditions.append(numbered.group(1).strip())
    if not conditions or not question:
        return None
    return Sticker(tuple(conditions), question)


# ---- answers

def extract_answer(text: str) -> str | None:
    """The last \\boxed{...} (nested braces allowed), else what follows the last 'answer is'."""
    text = text or ""
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip()
    said = list(re.finditer(r"answer is:?\s*", text, re.IGNORECASE))
    if said:
        rest = text[said[-1].end():].split("\n")[0].strip()
        return re.split(r"(?<=\D)\.\s|\.$", rest)[0].strip() or None
    return None


NUMBER = re.compile(r"-?\(?\d+(?:\.\d+)?\)?(?:\s*/\s*\(?\d+(?:\.\d+)?\)?)?")


def _clean(answer: str) -> str:
    answer = answer.split("=")[-1]  # "3 * 4 = 12 pens": the result, not the working
    text = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"(\1)/(\2)", answer)
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "").replace("\\!", "")
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def _value(answer: str | None) -> Fraction | None:
    number = NUMBER.search(_clean(answer)) if answer is not None else None
    if number is None:
        return None
    try:
        return Fraction(re.sub(r"[()\s]", "", number.group(0)))
    except (ValueError, ZeroDivisionError):
        return None


def normalize(answer: str | None) -> str | None:
    """A canonical form for showing and comparing answers: the part after the last '=', with units,
    $, %, spaces and thousands commas dropped; 12.0 -> 12; a/b and \\frac{a}{b} as a reduced fraction
    (a whole number when it is one)."""
    if answer is None:
        return None
    value = _value(answer)
    if value is None:
        cleaned = re.sub(r"\s+", " ", _clean(answer)).strip().strip(".").lower()
        return cleaned or None
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in NUMBER.search(_clean(answer)).group(0):
        return f"{value.numerator}/{value.denominator}"
    return f"{float(value):g}"


def equivalent(a: str | None, b: str | None) -> bool:
    """Same number (3/4 and 0.75 agree), or the same normalised text."""
    if normalize(a) is None or normalize(b) is None:
        return False
    value_a, value_b = _value(a), _value(b)
    if value_a is not None and value_b is not None:
        return value_a == value_b
    return normalize(a) == normalize(b)


# ---- the pipeline

def query_of(context: str | None, question: str) -> str:
    """The text SIFT works on: the question, after its context when there is one."""
    context = (context or "").strip()
    return f"{context}\n\n{question.strip()}" if context else question.strip()


@dataclass(frozen=True)
class StageRecord:
    """One model call of the pipeline and what came of it."""

    stage: str  # "fallback", "stage 1", "stage 2", "stage 3"
    step: str  # solve, sticker, sticker_only, query_sticker, optimize, inverse
    prompt: str
    output: str
    answer: str | None
    prompt_tokens: int
    new_tokens: int
    seconds: float
    sticker: dict | None = None  # for steps that write a Sticker: its conditions and question
    agrees: bool | None = None  # for query_sticker: whether it matches the Sticker-only answer

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SiftResult:
    query: str
    answer: str | None
    resolved_at: str
    baseline_answer: str | None  # the query-alone answer (P0)
    stages: tuple[StageRecord, ...] = field(repr=False)
    tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stages"] = [s.to_dict() for s in self.stages]
        return data


BOXED_DONE = re.compile(r"\\boxed\{[^{}]*(\{[^{}]*\}[^{}]*)*\}")


STICKER_OPENING = "Conditions:\n1. "  # opens the reply of a Sticker-writing step, so the format is kept


def _solved(text: str) -> bool:
    return BOXED_DONE.search(text) is not None or re.search(r"answer is[^\n]*\d[^\n]*\n", text) is not None


def _sticker_done(text: str) -> bool:
    return re.search(r"question\s*:[^\n]+\n", text, re.IGNORECASE) is not None


def ask(loaded: LoadedModel, config: RunConfig, text: str, budget: int, should_stop: Callable[[], bool],
        done: Callable[[str], bool], opening: str = "") -> tuple[str, str, int]:
    """One model call: (prompt, output, new tokens); the reply starts with `opening` (fed in the
    prompt, kept in the output); stops early once `done(output)` holds."""
    prompt = format_prompt(loaded.tokenizer, "", text, config.chat_template, opening)
    run_config = dataclasses.replace(config, max_new_tokens=budget)
    output, count, result = opening, 0, None
    with run_state(loaded.model, config.rope, config.mask):
        for item in decoded(loaded, prompt, run_config, should_stop):
            if isinstance(item, GenerationResult):
                result = item
                break
            output, count = output + item.text, count + 1
            if done(output):
                break
    return prompt, (opening + result.text if result else output).strip(), count


# The most model calls one SIFT run makes: the query alone, the first sticker, two answers per
# consensus check (three stages), two optimizations and the inverse.
MAX_CALLS = 11


def run_sift(loaded: LoadedModel, query: str, config: RunConfig | None = None, budget: int = 192,
             should_stop: Callable[[], bool] = lambda: False) -> Iterator[StageRecord | SiftResult]:
    """The whole pipeline on `query` (context and question together). Greedy unless the config's
    decoding says otherwise; `budget` new tokens per call."""
    config = config or RunConfig(decoding=DecodingSpec())
    started, records = time.perf_counter(), []

    def call(stage: str, step: str, text: str, done: Callable[[str], bool], **extra) -> StageRecord:
        began = time.perf_counter()
        is_sticker = step in ("sticker", "optimize", "inverse")
        prompt, output, count = ask(loaded, config, text, budget, should_stop, done,
                                    STICKER_OPENING if is_sticker else "")
        parsed = parse_sticker(output) if is_sticker else None
        record = StageRecord(stage, step, prompt, output, None if is_sticker else extract_answer(output),
                             len(encode(loaded.tokenizer, prompt)[0]), count, round(time.perf_counter() - began, 3),
                             {"conditions": list(parsed.conditions), "question": parsed.question} if parsed else None,
                             **extra)
        records.append(record)
        return record

    def finish(answer: str | None, resolved: str) -> SiftResult:
        return SiftResult(query, answer, resolved, baseline.answer, tuple(records),
                          sum(r.prompt_tokens + r.new_tokens for r in records), round(time.perf_counter() - started, 3))

    def consensus(stage: str, sticker_record: StageRecord) -> Iterator[StageRecord | SiftResult]:
        """CP(Q, S): the Sticker-only and the Query+Sticker answers; a result when they agree."""
        if sticker_record.sticker is None:
            return
        sticker = Sticker(tuple(sticker_record.sticker["conditions"]), sticker_record.sticker["question"]).render()
        alone = call(stage, "sticker_only", fill("sticker_only", sticker=sticker), _solved)
        yield alone
        both = call(stage, "query_sticker", fill("query_sticker", query=query, sticker=sticker), _solved)
        agrees = equivalent(alone.answer, both.answer)
        records[-1] = both = dataclasses.replace(both, agrees=agrees)
        yield both
        if agrees:
            yield finish(both.answer, stage)

    baseline = call("fallback", "solve", fill("solve", query=query), _solved)
    yield baseline
    first = call("stage 1", "sticker", fill("sticker", query=query), _sticker_done)
    yield first
    optimize_from = first
    for stage in ("stage 1", "stage 2", "stage 3"):
        if should_stop():
            break
        if stage == "stage 2":
            optimize_from = call(stage, "optimize", fill("optimize", query=query, sticker=first.output),
                                 _sticker_done)
            yield optimize_from
        elif stage == "stage 3":
            solution = next((r.output for r in reversed(records) if r.step == "query_sticker"), baseline.output)
            inverse = call(stage, "inverse", fill("inverse", solution=solution), _sticker_done)
            yield inverse
            optimize_from = call(stage, "optimize", fill("optimize", query=query, sticker=inverse.output),
                                 _sticker_done)
            yield optimize_from
        for item in consensus(stage, optimize_from):
            yield item
            if isinstance(item, SiftResult):
                return
    yield finish(baseline.answer, "fallback")


def missing_answer(result: SiftResult, budget: int) -> str | None:
    """Why a finished run has no answer, in a sentence a person can act on; None when it has one."""
    if result.answer is not None:
        return None
    step = "query_sticker" if result.resolved_at != "fallback" else "solve"
    final = next((r for r in reversed(result.stages) if r.step == step), result.stages[0] if result.stages else None)
    if final is not None and final.new_tokens >= budget:
        return (f"No answer: the {budget}-token budget per call ran out before the model wrote its answer as "
                "\\boxed{...}; raise the budget.")
    return "No answer: the model finished without writing \\boxed{...} or 'the answer is ...'."


def run_benchmark(loaded: LoadedModel, config: RunConfig | None = None, limit: int | None = None,
                  budget: int = 192, should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """SIFT over the mini benchmark; the query-alone answer (its first stage) is the baseline.
    One row per finished item."""
    for number, item in enumerate(problems()[:limit]):
        if should_stop():
            return
        *_, result = run_sift(loaded, item["question"], config, budget, should_stop)
        if not isinstance(result, SiftResult) or should_stop():
            return
        baseline_tokens = result.stages[0].prompt_tokens + result.stages[0].new_tokens
        yield {"item": number, "gold": item["answer"], "baseline_answer": result.baseline_answer,
               "baseline_correct": equivalent(result.baseline_answer, item["answer"]), "sift_answer": result.answer,
               "sift_correct": equivalent(result.answer, item["answer"]), "resolved_at": result.resolved_at,
               "baseline_tokens": baseline_tokens, "sift_tokens": result.tokens, "seconds": result.seconds}


def benchmark_summary(rows: list[dict]) -> dict:
    """Accuracy of the baseline and of SIFT, the share resolved at each stage, tokens per item."""
    count = len(rows) or 1
    return {"items": len(rows),
            "baseline_accuracy": round(sum(r["baseline_correct"] for r in rows) / count, 3),
            "sift_accuracy": round(sum(r["sift_correct"] for r in rows) / count, 3),
            "resolved_share": {s: round(sum(r["resolved_at"] == s for r in rows) / count, 3) for s in RESOLUTIONS},
            "baseline_tokens_per_item": round(sum(r["baseline_tokens"] for r in rows) / count, 1),
            "sift_tokens_per_item": round(sum(r["sift_tokens"] for r in rows) / count, 1)}


def sticker_attention(loaded: LoadedModel, config: RunConfig, query: str, sticker: str, budget: int = 64) -> dict:
    """Attention mass that the answer tokens of a Query+Sticker prediction put on the Sticker against
    the original problem text: in total, per token of each span, and per layer (mean over heads)."""
    from engines.attention.function import AttentionCapture
    from engines.attention.views import span_mass, stacked
    from engines.probes.runner import check_capture

    check_capture(config)
    text = fill("query_sticker", query=query, sticker=sticker)
    prompt = format_prompt(loaded.tokenizer, "", text, config.chat_template)
    position = lambda offset: len(encode(loaded.tokenizer, prompt[:offset])[0])  # noqa: E731
    spans = {}
    for name, part in (("question", query), ("sticker", sticker)):
        start = prompt.find(part, prompt.find(query) + len(query) if name == "sticker" else 0)
        spans[name] = (position(start), position(start + len(part)))
    prompt_tokens = len(encode(loaded.tokenizer, prompt)[0])
    capture = AttentionCapture([prompt_tokens - 1])
    with run_state(loaded.model, config.rope, config.mask, capture=capture):
        *_, result = decoded(loaded, prompt, dataclasses.replace(config, max_new_tokens=budget), lambda: False)
    matrix = stacked(capture, "answer" if capture.steps else "question")
    out = {"answer_tokens": len(capture.steps), "spans": spans}
    for name, span in spans.items():
        by_layer = [sum(heads) / len(heads) for heads in span_mass(matrix, [span])]
        out[f"{name}_mass"] = round(sum(by_layer) / len(by_layer), 5)
        out[f"{name}_per_token"] = round(out[f"{name}_mass"] / max(1, span[1] - span[0]), 6)
        out[f"{name}_by_layer"] = [round(v, 5) for v in by_layer]
    return out
