"""What the Probe and Haystack tabs show of a run, written once: the answer streaming with a live
attention plot, then the captured attention views and the explorer."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from services.run_flow import Finished, Streamed
from ui import attention_panel, figures
from ui.attention_panel import AttentionPanel
from ui.prompt_view import highlighted, token_offsets
from ui.text import Refusal, warn


@dataclass
class RunView:
    answer: gr.Textbox
    profile_plot: gr.Plot
    position_plot: gr.Plot
    panel: AttentionPanel
    probabilities: gr.Plot
    prompt_view: gr.HTML
    mass_plot: gr.Plot | None = None  # Haystack tab: layer x head mass on the needle
    segment_plot: gr.Plot | None = None  # Haystack tab: mass per segment

    def plots(self) -> list:
        """The outputs after the tab's own: the attention plots, the explorer's state and selectors, the
        token probability chart and the marked prompt."""
        extra = [p for p in (self.mass_plot, self.segment_plot) if p is not None]
        return [self.profile_plot, *extra[:1], self.position_plot, *extra[1:], self.panel.state, self.panel.layer,
                self.panel.head, self.panel.retrieval_plot, self.probabilities, self.prompt_view]


def streamed(view: RunView, flow: Iterator[Streamed | Finished], capture, spans: list[dict],
             also: Callable[[Streamed], dict] = lambda step: {}) -> Iterator[dict]:
    """Updates while the answer streams (with `also(step)`); returns the Finished step."""
    for step in flow:
        if isinstance(step, Finished):
            if step.warning:
                warn(step.warning)
            return step
        yield {view.answer: step.text} | attention_panel.live_profile(capture, step.index, spans,
                                                                      view.profile_plot) | also(step)
    raise Refusal("The run ended without a result; run it again.")


def shown_views(view: RunView, finished: Finished, capture, loaded, prompt: str, spans: list[dict], config,
                prompt_tokens: int, generated: list[int], expected: str | None = None) -> dict:
    """The captured attention views and the explorer's state after a run (nothing without a capture)."""
    views = finished.views
    if not views:
        return {}
    state = attention_panel.captured_state(capture, loaded, prompt, spans, config, generated, expected)
    tokens = state["tokens"]
    shown = {view.profile_plot: gr.Plot(figures.attention_profile(views["profile"], spans, tokens=tokens), visible=True),
             view.position_plot: gr.Plot(figures.layer_position_map(views["layer_position"], prompt_tokens,
                                                                    tokens=tokens, layers=state["layers"]), visible=True),
             view.prompt_view: highlighted(prompt, spans, views["profile"], token_offsets(loaded.tokenizer, prompt))}
    if view.mass_plot is not None:
        shown[view.mass_plot] = gr.Plot(figures.layer_head_map(views["needle_mass"], layers=state["layers"]),
                                        visible=True)
    if view.segment_plot is not None:
        shown[view.segment_plot] = gr.Plot(figures.segment_bars(views["segments"]), visible=True)
    return shown | attention_panel.shown_after_run(view.panel, state)


def readable(view: RunView, prompt: str, spans: list[dict], tokens: list[dict]) -> dict:
    """After any run: each new token's probability, and the prompt with its needles marked."""
    return {view.probabilities: gr.Plot(figures.token_probabilities(tokens), visible=bool(tokens)),
            view.prompt_view: highlighted(prompt, spans)}
