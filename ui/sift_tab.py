"""SIFT tab: a problem (or any question with its context) through the Stick-to-the-Facts pipeline,
stage by stage, and the mini benchmark of grade-school word problems against the plain answer."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from engines.config.policy import limits
from engines.model.jobs import model_job
from engines.model.loading import MANAGER
from engines.probes.runner import check_prompt_length
from engines.studies.sift import (
    MAX_CALLS,
    SiftResult,
    Sticker,
    benchmark_summary,
    missing_answer,
    problems,
    query_of,
    run_benchmark,
    run_sift,
    sticker_attention,
)
from services.run_log import session_for, write_run
from storage.db import StorageError, Store
from ui import figures
from ui.model_panel import ConfigInputs, Panel, describe_loaded, loaded_model, said_to_user
from ui.progress import Clock, seconds_for
from ui.text import Refusal, warn

STAGE_HEADERS = ["#", "stage", "step", "answer", "agrees", "prompt tokens", "new tokens", "seconds"]
BENCHMARK_HEADERS = ["item", "gold", "baseline_answer", "baseline_correct", "sift_answer", "sift_correct",
                     "resolved_at", "baseline_tokens", "sift_tokens", "seconds"]


def stage_rows(stages: list[dict]) -> list[list]:
    return [[i, s["stage"], s["step"], s["answer"], s["agrees"], s["prompt_tokens"], s["new_tokens"], s["seconds"]]
            for i, s in enumerate(stages, 1)]


def stage_choices(stages: list[dict]) -> list[str]:
    return [f"{i}. {s['stage']}: {s['step']}" for i, s in enumerate(stages, 1)]


def latest_sticker(stages: list[dict]) -> str:
    for stage in reversed(stages):
        if stage["sticker"]:
            return Sticker(tuple(stage["sticker"]["conditions"]), stage["sticker"]["question"]).render()
    return ""


def log(store, state, kind, config, inputs, outputs) -> tuple[str | None, dict]:
    log_to, session_id, state = session_for(store, state)
    try:
        return write_run(log_to, session_id, kind, config, MANAGER.loaded, inputs, outputs, None), state
    except StorageError as exc:
        warn(str(exc))
        return None, state


@dataclass
class SiftTab:
    answer: gr.Textbox
    timeline: gr.Plot
    stages_table: gr.Dataframe
    sticker_card: gr.Textbox
    attention_plot: gr.Plot
    stages_state: gr.State
    picked: gr.Dropdown
    bench_summary: gr.JSON
    bench_plot: gr.Plot
    bench_rows: gr.Dataframe
    session: gr.State
    status: gr.Markdown
    store: Store | None


def sift(tab: SiftTab, context, question, budget, attention_wanted, state, *values, progress=gr.Progress()):
    """The pipeline stage by stage, then the Sticker attention (when asked) and the logged run."""
    run_config = Panel.of(values).config()
    if not (question or "").strip():
        raise Refusal("Enter a problem or a question for SIFT to work on.")
    with said_to_user():
        limits().check_calls(MAX_CALLS, int(budget))
    query = query_of(context, question)
    loaded = loaded_model(run_config, progress)
    with said_to_user():
        query_tokens = check_prompt_length(loaded, query)
    stages: list[dict] = []
    # a run makes MAX_CALLS model calls at most and 4 when the first Sticker's answers agree
    clock = Clock(progress, MAX_CALLS, seconds_for(loaded, run_config, [query_tokens + 200] * 4, int(budget)))
    events = MANAGER.stream(run_config.model, model_job(run_sift, query, run_config, int(budget)),
                            seconds=clock.estimate)
    result = None
    with said_to_user():
        for item in events:
            if isinstance(item, SiftResult):
                result = item
                break
            stages.append(item.to_dict())
            clock.step(len(stages), "model calls at most")
            yield {tab.timeline: figures.sift_timeline(stages), tab.stages_table: stage_rows(stages),
                   tab.sticker_card: latest_sticker(stages), tab.answer: f"working: {item.stage}, {item.step}"}
    if result is None:
        return
    attention = None
    if attention_wanted and latest_sticker(stages):
        with said_to_user():
            attention = MANAGER.run(run_config.model, sticker_attention, run_config, query, latest_sticker(stages))
    outputs = result.to_dict() | ({"sticker_attention": attention} if attention else {})
    run_id, state = log(tab.store, state, "sift", run_config,
                        {"context": context, "question": question, "budget": int(budget)}, outputs)
    answer = missing_answer(result, int(budget)) or result.answer
    yield {tab.answer: f"{answer} (resolved at: {result.resolved_at}; query alone said "
                       f"{result.baseline_answer}; {result.tokens} tokens, {result.seconds:.1f} s; run {run_id})",
           tab.timeline: figures.sift_timeline(stages, result.resolved_at), tab.stages_table: stage_rows(stages),
           tab.stages_state: stages, tab.picked: gr.Dropdown(stage_choices(stages), value=None), tab.session: state,
           tab.sticker_card: latest_sticker(stages),
           tab.attention_plot: figures.sticker_attention_bars(attention) if attention else None,
           tab.status: describe_loaded()}


def show_stage(choice, stages):
    if not choice:
        return "", ""
    stage = stages[int(choice.split(".")[0]) - 1]
    return stage["prompt"], stage["output"]


def benchmark(tab: SiftTab, count, budget, state, *values, progress=gr.Progress()):
    """SIFT against the problem alone over the mini benchmark, problem by problem."""
    run_config = Panel.of(values).config()
    if count is None or int(count) != count or count < 1:
        raise Refusal("The number of problems must be a whole number, 1 or more.")
    with said_to_user():
        limits().check_calls(int(count) * MAX_CALLS, int(budget))
    loaded_model(run_config, progress)
    total, rows = int(count), []
    events = MANAGER.stream(run_config.model, model_job(run_benchmark, run_config, total, int(budget)))
    with said_to_user():
        for row in events:
            rows.append(row)
            progress(len(rows) / total, desc=f"problem {len(rows)}/{total}")
            summary = benchmark_summary(rows)
            yield {tab.bench_summary: summary, tab.bench_plot: figures.sift_benchmark_bars(summary),
                   tab.bench_rows: [[row[h] for h in BENCHMARK_HEADERS] for row in rows]}
    summary = benchmark_summary(rows)
    run_id, state = log(tab.store, state, "sift_benchmark", run_config, {"limit": total, "budget": int(budget)},
                        {"summary": summary, "rows": rows})
    yield {tab.bench_summary: summary | {"run_id": run_id}, tab.session: state,
           tab.bench_plot: figures.sift_benchmark_bars(summary),
           tab.bench_rows: [[row[h] for h in BENCHMARK_HEADERS] for row in rows]}


def build(config: ConfigInputs, store: Store | None, session: gr.State) -> None:
    with gr.Tab("SIFT", id="sift"):
        gr.Markdown("**Stick to the Facts.** The model restates the problem as a *Sticker* (numbered conditions "
                    "and one question), answers from the Sticker alone and from the problem plus the Sticker, and "
                    "keeps an answer only when the two agree (stage 1). Otherwise it improves the Sticker (stage 2: "
                    "forward optimisation), then re-derives one from its own solution and improves that (stage 3: "
                    "inverse generation), and at last falls back to the answer to the problem alone. Answers are "
                    "the last `\\boxed{}` (else the 'answer is' sentence), compared after normalisation.")
        with gr.Row():
            with gr.Column(scale=3):
                context = gr.Textbox("", lines=3, label="Context (optional: put before the question)")
                question = gr.Textbox(problems()[0]["question"], lines=3, label="Problem or question",
                                      elem_id="sift-question")
            with gr.Column(scale=2):
                budget = gr.Slider(32, 512, value=192, step=16, label="New tokens per model call",
                                   elem_id="sift-budget")
                attention_on = gr.Checkbox(False, label="Measure attention on the Sticker against the problem")
                with gr.Row():
                    run = gr.Button("Run SIFT", variant="primary", elem_id="sift-run")
                    stop = gr.Button("Cancel", variant="stop")
        answer = gr.Textbox(label="Final answer", interactive=False, elem_id="sift-answer")
        timeline = gr.Plot(label="Stages over time")
        stages_table = gr.Dataframe(headers=STAGE_HEADERS, label="Stages", wrap=True)
        with gr.Row():
            sticker_card = gr.Textbox(label="Sticker", lines=6, interactive=False, elem_classes="sticker-card")
            attention_plot = gr.Plot(label="Attention on the Sticker vs the problem")
        stages_state = gr.State([])
        picked = gr.Dropdown([], label="Look at one stage", elem_id="sift-stage")
        with gr.Accordion("Its prompt", open=False):
            picked_prompt = gr.Textbox(lines=8, max_lines=30, interactive=False, show_label=False)
        picked_output = gr.Textbox(lines=6, max_lines=30, interactive=False, label="Its output",
                                   elem_id="sift-stage-output")
        with gr.Accordion("Mini benchmark: grade-school word problems, query alone vs SIFT", open=False):
            gr.Markdown(f"{len(problems())} problems written for the lab (`assets/sift_problems.json`). The baseline "
                        "is the pipeline's own first call (the problem alone), so it costs nothing extra.")
            with gr.Row():
                limit = gr.Slider(1, len(problems()), value=10, step=1, label="Problems")
                bench_run = gr.Button("Run the benchmark", elem_id="sift-bench-run")
                bench_stop = gr.Button("Cancel", variant="stop")
            bench_summary = gr.JSON(label="Accuracy, stage shares, tokens per item")
            bench_plot = gr.Plot(label="Accuracy and stage shares")
            bench_rows = gr.Dataframe(headers=BENCHMARK_HEADERS, label="Every problem", wrap=True)

    tab = SiftTab(answer, timeline, stages_table, sticker_card, attention_plot, stages_state, picked, bench_summary,
                  bench_plot, bench_rows, session, config.status, store)
    event = run.click(partial(sift, tab), [context, question, budget, attention_on, session, *config.all()],
                      [answer, timeline, stages_table, sticker_card, attention_plot, stages_state, picked, session,
                       config.status], api_name="sift", concurrency_id="model")
    stop.click(None, cancels=[event], api_name=False)
    picked.change(show_stage, [picked, stages_state], [picked_prompt, picked_output], api_name="sift_stage")
    bench_event = bench_run.click(partial(benchmark, tab), [limit, budget, session, *config.all()],
                                  [bench_summary, bench_plot, bench_rows, session], api_name="sift_benchmark",
                                  concurrency_id="model")
    bench_stop.click(None, cancels=[bench_event], api_name=False)
