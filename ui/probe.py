"""Probe tab: a context and a question, the answer streamed token by token, with timings."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from engines.attention.function import AttentionCapture
from engines.attention.views import context_profile, layer_position, question_positions, stacked
from engines.decoding.generation import GenerationResult, format_prompt
from engines.model.jobs import model_job
from engines.probes.runner import check_prompt_length, run_free
from services.run_flow import run_logged
from services.run_log import log_generation, session_for
from storage.db import Store
from ui import attention_panel
from ui.model_panel import ConfigInputs, Panel, describe_loaded, loaded_model, said_to_user
from ui.run_view import RunView, readable, shown_views, streamed
from ui.text import Refusal, key_values

EXAMPLE_CONTEXT = "The capital of France is Paris."
EXAMPLE_QUESTION = "What is the capital of France? Answer with one word."


@dataclass
class ProbeTab:
    run: RunView
    stats: gr.JSON  # the record for API clients; the page shows `table`
    table: gr.Dataframe
    prompt_box: gr.Textbox
    status: gr.Markdown
    session: gr.State
    store: Store | None


def stats_of(result: GenerationResult | None, answer_tokens: int = 0, run_id: str | None = None,
             warning: str | None = None) -> dict:
    if result is None:
        return {"new_tokens": answer_tokens, "status": "generating"}
    return {"prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens,
            "time_to_first_token_s": result.ttft, "tokens_per_second": result.tokens_per_second,
            "seconds": result.seconds, "finish": result.finish, "run_id": run_id} | (
        {"not_saved": warning} if warning else {})


def free_views(capture: AttentionCapture) -> dict:
    matrix = stacked(capture)
    return {"profile": context_profile(matrix), "layer_position": layer_position(matrix), "rows": capture.positions}


def probe(tab: ProbeTab, context, question, capture_wanted, state, *values, progress=gr.Progress()):
    """Stream the answer to `question` about `context` under the panel's configuration, then log it."""
    run_config = Panel.of(values).config()
    if not question or not question.strip():
        raise Refusal("Enter a question: the probe needs something to ask about the context.")
    loaded = loaded_model(run_config, progress)
    prompt = format_prompt(loaded.tokenizer, context or "", question.strip(), run_config.chat_template,
                           transform=run_config.transform)
    with said_to_user():
        prompt_tokens = check_prompt_length(loaded, prompt)
    capture = AttentionCapture(question_positions(loaded.tokenizer, prompt, question)) \
        if capture_wanted else None
    log_to, session_id, state = session_for(tab.store, state)
    flow = run_logged(
        run_config.model, model_job(run_free, prompt, run_config, capture=capture),
        (lambda: free_views(capture)) if capture else None,
        lambda result, extra: log_generation(log_to, session_id, "probe", run_config, loaded,
                                             {"context": context, "question": question}, result, extra))
    with said_to_user():
        finished = yield from streamed(tab.run, flow, capture, [], lambda step: {
            tab.stats: stats_of(None, step.index + 1), tab.prompt_box: prompt})
    result = finished.result
    shown = readable(tab.run, prompt, [], [t.to_dict() for t in result.tokens]) | shown_views(
        tab.run, finished, capture, loaded, prompt, [], run_config, prompt_tokens, [t.token_id for t in result.tokens])
    stats = stats_of(result, run_id=finished.run_id, warning=finished.warning)
    yield {tab.run.answer: result.text, tab.stats: stats, tab.table: key_values(stats), tab.prompt_box: prompt,
           tab.session: state, tab.status: describe_loaded()} | shown


def build(config: ConfigInputs, store: Store | None, session: gr.State) -> None:
    with gr.Tab("Probe", id="probe"):
        gr.Markdown("Give a context and a question. The prompt is formatted with the model's chat "
                    "template (unless switched off) and the answer streams under the Decoding setting of the panel "
                    "(greedy by default; beam methods show their best beam when done).")
        with gr.Row():
            with gr.Column(scale=3):
                context = gr.Textbox(EXAMPLE_CONTEXT, lines=8, max_lines=20, label="Context", elem_id="probe-context")
                question = gr.Textbox(EXAMPLE_QUESTION, label="Question")
                with gr.Row():
                    run = gr.Button("Run probe", variant="primary", elem_id="probe-run")
                    stop = gr.Button("Cancel", variant="stop")
            with gr.Column(scale=2):
                answer = gr.Textbox(label="Answer", lines=4, interactive=False)
                stats = gr.JSON(visible=False)
                table = gr.Dataframe(headers=["measure", "value"], label="Prompt tokens, time to first token, "
                                     "tokens per second", interactive=False, elem_id="probe-stats")
        probabilities = gr.Plot(label="Probability of each new token", visible=False)
        capture_on = gr.Checkbox(False, label="Capture attention (question and answer rows, every layer and head)")
        with gr.Row():
            profile_plot = gr.Plot(label="Attention over the context", visible=False)
            position_plot = gr.Plot(label="Layer x position", visible=False)
        panel = attention_panel.build(profile_plot, position_plot, "probe")
        prompt_view = gr.HTML(elem_id="probe-prompt-view")
        with gr.Accordion("Prompt: the exact text fed to the model", open=False):
            prompt_box = gr.Textbox(lines=10, max_lines=30, interactive=False, show_label=False, elem_id="probe-prompt")
    tab = ProbeTab(RunView(answer, profile_plot, position_plot, panel, probabilities, prompt_view), stats, table,
                   prompt_box, config.status, session, store)
    event = run.click(partial(probe, tab), [context, question, capture_on, session, *config.all()],
                      [answer, stats, prompt_box, session, config.status, *tab.run.plots(), table],
                      api_name="probe", concurrency_id="model")
    stop.click(None, cancels=[event], api_name=False)
