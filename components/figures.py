"""Figure builders: pure functions from result data (plain dicts and lists) to plotly figures.

The Sessions tab re-renders stored runs with these same functions.
"""
from __future__ import annotations

import plotly.graph_objects as go

KIND_COLOURS = {"needle": "#d62728", "gold": "#2ca02c", "distractor": "#ff7f0e", "document": "#1f77b4",
                "haystack": "#c7c7c7"}


def needle_strip(spans: list[dict], prompt_tokens: int) -> go.Figure:
    """Where the haystack, needles, distractors and gold document sit along the prompt's tokens."""
    fig = go.Figure()
    fig.add_shape(type="rect", x0=0, x1=prompt_tokens, y0=0.35, y1=0.65, line_width=0,
                  fillcolor="#efefef")
    for kind in ("haystack", "distractor", "document", "gold", "needle"):
        chosen = [s for s in spans if s["kind"] == kind]
        if not chosen:
            continue
        height = 0.3 if kind == "haystack" else 0.8
        fig.add_trace(go.Bar(
            x=[max(1, s["token_end"] - s["token_start"]) for s in chosen], base=[s["token_start"] for s in chosen],
            y=[0.5] * len(chosen), width=height, orientation="h", name=kind, marker_color=KIND_COLOURS[kind],
            customdata=[[s["label"], s["token_start"], s["token_end"]] for s in chosen],
            hovertemplate="%{customdata[0]}<br>tokens %{customdata[1]}-%{customdata[2]}<extra>" + kind + "</extra>"))
    fig.update_layout(barmode="overlay", height=170, margin=dict(l=10, r=10, t=30, b=30),
                      title=f"Where things sit in the {prompt_tokens:,}-token prompt",
                      xaxis=dict(title="token position", range=[0, prompt_tokens]),
                      yaxis=dict(visible=False, range=[0, 1]), legend=dict(orientation="h", y=-0.5))
    return fig
