"""Attention explorer under the Probe and Haystack tabs' attention plots: re-slice a captured run by
layer, head, rows (question or answer) and reduction, on a linear or log scale; one head's full
query x key map on demand; retrieval heads when the answer is copied from the prompt."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from engines.attention.function import AttentionCapture
from engines.attention.views import (
    answer_span,
    context_profile,
    layer_labels,
    layer_position,
    pack,
    retrieval_scores,
    stacked,
    step_attention,
    unpack,
)
from engines.config.specs import RunConfig
from engines.decoding.generation import encode
from engines.model.loading import MANAGER
from engines.probes.runner import full_head_map
from ui import figures
from ui.model_panel import loaded_model, said_to_user
from ui.prompt_view import token_texts
from ui.text import Refusal

ALL = "all"


@dataclass
class AttentionPanel:
    state: gr.State
    layer: gr.Dropdown
    head: gr.Dropdown
    rows: gr.Radio
    reduce: gr.Radio
    log: gr.Checkbox
    full_button: gr.Button
    full_plot: gr.Plot
    retrieval_plot: gr.Plot


def captured_state(capture: AttentionCapture, loaded, prompt: str, spans: list[dict], config: RunConfig,
                   generated: list[int], answer: str | None = None) -> dict:
    """What the explorer keeps for one captured run (server side): the question and answer rows
    [layers, heads, keys] packed as float16, the prompt, its tokens' texts, its spans, the config and
    retrieval scores."""
    prompt_ids = encode(loaded.tokenizer, prompt)[0].tolist()
    state = {"question": pack(stacked(capture)), "answer": pack(stacked(capture, "answer")) if capture.steps else None,
             "prompt": prompt, "spans": spans, "config": config.to_dict(), "retrieval": None,
             "tokens": token_texts(loaded.tokenizer, prompt_ids), "layers": layer_labels(loaded.model.config)}
    if answer and capture.steps and len(generated) > 1:
        span = answer_span(loaded.tokenizer, prompt_ids, answer)
        if span is not None:
            scores = retrieval_scores(step_attention(capture), generated[1:], prompt_ids, span)
            state["retrieval"] = scores.tolist()
    return state


def live_profile(capture: AttentionCapture | None, index: int, spans: list[dict], plot: gr.Plot) -> dict:
    """Every 4th streamed token, the attention plot redrawn from the answer rows captured so far."""
    if capture is None or index % 4 != 3:
        return {}
    profile = context_profile(stacked(capture, "answer"))
    return {plot: gr.Plot(figures.attention_profile(profile, spans, title="Attention over the context (answer so "
                                                    "far)"), visible=True)}


def choices(count: int) -> list[str]:
    return [ALL, *map(str, range(count))]


def selectors(state: dict) -> tuple:
    """Updated layer and head dropdowns for a newly captured run."""
    layers, heads = state["question"]["shape"][:2]
    return gr.Dropdown(choices(layers), value=ALL), gr.Dropdown(choices(heads), value=ALL)


def _index(value) -> int | None:
    return None if value in (None, ALL) else int(value)


def sliced_profile(state: dict | None, layer, head, rows: str, reduce: str, log: bool):
    if not state:
        return None
    packed = state["answer"] if rows == "answer" and state.get("answer") else state["question"]
    profile = context_profile(unpack(packed), _index(layer), _index(head), reduce)
    what = f"{'answer' if packed is state.get('answer') else 'question'} rows, layer {layer}, head {head}, {reduce}"
    return figures.attention_profile(profile, state["spans"], log=log, title=f"Attention over the context ({what})",
                                     tokens=state.get("tokens"))


def sliced_positions(state: dict | None, log: bool):
    if not state:
        return None
    matrix = unpack(state["question"])
    return figures.layer_position_map(layer_position(matrix), matrix.shape[-1], log=log, tokens=state.get("tokens"),
                                      layers=state.get("layers"))


def full_map(current, layer_value, head_value, log_value, progress=gr.Progress()):
    """One layer and head's full query x key map of the captured run's prompt."""
    if not current:
        raise Refusal("Run a probe with 'Capture attention' on first.")
    if _index(layer_value) is None or _index(head_value) is None:
        raise Refusal("Choose one layer and one head (not 'all') for the full map.")
    config = RunConfig.from_dict(current["config"])
    loaded_model(config, progress)
    with said_to_user():
        result = MANAGER.run(config.model, full_head_map, current["prompt"], config, int(layer_value),
                             int(head_value), current["spans"])
    return figures.head_map(result, current["spans"], log_value)


def build(profile_plot: gr.Plot, position_plot: gr.Plot, prefix: str) -> AttentionPanel:
    """The explorer's controls (below the tab's attention plots) and their events; element ids start
    with `prefix`."""
    state = gr.State(None)
    with gr.Accordion("Explore the captured attention", open=False):
        with gr.Row():
            layer = gr.Dropdown([ALL], value=ALL, label="Layer", elem_id=f"{prefix}-layer")
            head = gr.Dropdown([ALL], value=ALL, label="Head", elem_id=f"{prefix}-head")
            rows = gr.Radio(["question", "answer"], value="question", label="Query rows")
            reduce = gr.Radio(["mean", "max"], value="mean", label="Over the chosen layers/heads")
            log = gr.Checkbox(False, label="Log colour scale", elem_id=f"{prefix}-log")
        with gr.Row():
            full_button = gr.Button("Full query x key map of this layer and head", elem_id=f"{prefix}-full-map")
        full_plot = gr.Plot(label="One head's full map (pooled to at most 512 x 512; token by token up to 512 tokens)")
        retrieval_plot = gr.Plot(label="Retrieval heads (copy-paste score; above 0.1 counts as a retrieval head)")
    panel = AttentionPanel(state, layer, head, rows, reduce, log, full_button, full_plot, retrieval_plot)
    for control in (layer, head, rows, reduce, log):
        control.change(sliced_profile, [state, layer, head, rows, reduce, log], profile_plot, api_name=False)
    log.change(sliced_positions, [state, log], position_plot, api_name=False)

    full_button.click(full_map, [state, layer, head, log], full_plot, api_name="attention_full_map",
                      concurrency_id="model")
    return panel


def shown_after_run(panel: AttentionPanel, state: dict) -> dict:
    """Updates for the panel once a captured run finishes."""
    layer, head = selectors(state)
    retrieval = None
    if state["retrieval"]:
        retrieval = figures.layer_head_map(state["retrieval"], "Retrieval score per head (copy-paste rule)",
                                           value="score", layers=state.get("layers"))
    return {panel.state: state, panel.layer: layer, panel.head: head, panel.retrieval_plot: retrieval}
