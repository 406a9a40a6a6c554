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


def key_values(record: dict) -> list[list[str]]:
    """A record as rows of (what, value) for a two-column table: numbers rounded, lists joined."""
    def shown(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, (list, tuple)):
            return ", ".join(shown(item) for item in value)
        if isinstance(value, dict):
            return "; ".join(f"{key}: {shown(item)}" for key, item in value.items())
        return "" if value is None else str(value)
    return [[str(key).replace("_", " "), shown(value)] for key, value in record.items()]


def badge(good: bool, word: str, pairs: list[tuple[str, str]]) -> str:
    """A green or red badge followed by "label <code>value</code>" pairs, every value escaped."""
    colour = "#2ca02c" if good else "#d62728"
    rest = ", ".join(f"{label} <code>{html.escape(value)}</code>" for label, value in pairs)
    return f'<div class="verdict"><span class="verdict-badge" style="background:{colour}">{word}</span> {rest}</div>'


def verdict_badge(correct: bool | None, expected: list[str], answer: str, score: float | None = None) -> str:
    """A found / missed badge with the expected answer against the model's."""
    if correct is None:
        return ""
    partial = f" (score {score:.2f})" if score is not None and 0 < score < 1 else ""
    return badge(correct, ("found" if correct else "missed") + partial,
                 [("expected", " | ".join(expected)), ("answered", answer.strip()[:300])])
