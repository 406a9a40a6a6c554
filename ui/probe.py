"""Probe tab: a context and a question, the answer streamed token by token, with timings."""
from __future__ import annotations

import gradio as gr

from engines.attention.function import AttentionCapture
from engines.attention.views import context_profile, layer_position, question_positions, stacked
from engines.decoding.generation import GenerationResult, encode, format_prompt
from engines.model.loading import MANAGER
from engines.probes.runner import run_free
from services.run_log import log_generation, session_for
from storage.db import StorageError, Store
from ui import attention_panel, figures
from ui.model_panel import ConfigInputs, config_from_values, describe_loaded, loaded_model, said_to_user

EXAMPLE_CONTEXT = "The capital of France is Paris."
EXAMPLE_QUESTION = "What is the capital of France? Answer with one word."


def stats_of(result: GenerationResult | None, answer_tokens: int = 0, run_id: str | None = None) -> dict:
    if result is None:
        return {"new_tokens": answer_tokens, "status": "generating"}
    return {"prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens,
            "time_to_first_token_s": result.ttft, "tokens_per_second": result.tokens_per_second,
            "seconds": result.seconds, "finish": result.finish, "run_id": run_id}


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
                stats = gr.JSON(label="Prompt tokens, time to first token, tokens per second")
        capture_on = gr.Checkbox(False, label="Capture attention (question and answer rows, every layer and head)")
        with gr.Row():
            profile_plot = gr.Plot(label="Attention over the context", visible=False)
            position_plot = gr.Plot(label="Layer x position", visible=False)
        panel = attention_panel.build(profile_plot, position_plot, "probe")
        with gr.Accordion("Prompt: the exact text fed to the model", open=False):
            prompt_box = gr.Textbox(lines=10, max_lines=30, interactive=False, show_label=False, elem_id="probe-prompt")

    def probe(context_text, question_text, capture_wanted, state, *values, progress=gr.Progress()):
        run_config = config_from_values(*values)
        if not question_text or not question_text.strip():
            raise gr.Error("Enter a question: the probe needs something to ask about the context.")
        loaded = loaded_model(run_config, progress)
        prompt = format_prompt(loaded.tokenizer, context_text or "", question_text.strip(), run_config.chat_template)
        text = ""
        prompt_tokens = len(encode(loaded.tokenizer, prompt)[0])
        capture = AttentionCapture(question_positions(loaded.tokenizer, prompt_tokens, question_text.strip())) \
            if capture_wanted else None
        events = MANAGER.stream(run_config.model, lambda model, should_stop: run_free(
            model, prompt, run_config, should_stop, capture))
        with said_to_user():
            for item in events:
                if isinstance(item, GenerationResult):
                    break
                text += item.text
                live = attention_panel.live_profile(capture, item.index, [], profile_plot)
                yield {answer: text, stats: stats_of(None, item.index + 1), prompt_box: prompt} | live
        views = None
        if capture is not None:
            matrix = stacked(capture)
            views = {"profile": context_profile(matrix), "layer_position": layer_position(matrix),
                     "rows": capture.positions}
        log_to, session_id, state = session_for(store, state)
        try:
            run_id = log_generation(log_to, session_id, "probe", run_config, loaded,
                                    {"context": context_text, "question": question_text}, item,
                                    {"attention": views} if views else None)
        except StorageError as exc:
            gr.Warning(str(exc))
            run_id = None
        shown = {}
        if views:
            shown = {profile_plot: gr.Plot(figures.attention_profile(views["profile"], []), visible=True),
                     position_plot: gr.Plot(figures.layer_position_map(views["layer_position"], prompt_tokens),
                                            visible=True)}
            shown |= attention_panel.shown_after_run(panel, attention_panel.captured_state(
                capture, loaded, prompt, [], run_config, [t.token_id for t in item.tokens]))
        yield {answer: item.text, stats: stats_of(item, run_id=run_id), prompt_box: prompt,
               session: state, config.status: describe_loaded()} | shown

    event = run.click(probe, [context, question, capture_on, session, *config.all()],
                      [answer, stats, prompt_box, session, config.status, profile_plot, position_plot, panel.state,
                       panel.layer, panel.head, panel.retrieval_plot],
                      api_name="probe", concurrency_id="model")
    stop.click(None, cancels=[event], api_name=False)
