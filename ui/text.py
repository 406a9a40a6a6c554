"""Messages and labels shown as text. Gradio renders toast messages as HTML and Plotly renders tags
such as <b> and <a> inside titles, hovers and tick labels, so every string that may carry user or
model text is escaped here, in one place, before it is shown."""
from __future__ import annotations

import html

import gradio as gr


class Refusal(gr.Error):
    """A gr.Error whose sentence shows as text, whatever it quotes."""

    def __init__(self, message: object):
        super().__init__(html.escape(str(message), quote=False))


def warn(message: object) -> None:
    gr.Warning(html.escape(str(message), quote=False))


def plain(label: object) -> str:
    """A label Plotly shows literally (it decodes the entities back to the characters)."""
    return html.escape(str(label), quote=False)
