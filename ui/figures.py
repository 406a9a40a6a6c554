"""Figure builders: pure functions from result data (plain dicts and lists) to plotly figures.

The Sessions tab re-renders stored runs with these same functions.
"""
from __future__ import annotations

import html
import math
import textwrap

import plotly.graph_objects as go

from engines.studies.sweep_stats import by_depth, by_length, effective_length, grid, u_curve_indices


def fitted(fig: go.Figure) -> go.Figure:
    """The title wrapped into short lines, left-aligned, with margins that grow to fit the title and the
    axis labels, so nothing is clipped or overlaps at phone width."""
    title = fig.layout.title.text
    if title:
        head, sep, rest = title.partition("<br>")
        fig.update_layout(title=dict(text="<br>".join(textwrap.wrap(head, TITLE_CHARS)) + sep + rest, x=0.01,
                                     xanchor="left", automargin=True, font=dict(size=15)))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def plain(label: object) -> str:
    """A label Plotly shows literally (it decodes the entities back to the characters)."""
    return html.escape(str(label), quote=False)


TITLE_CHARS = 46  # about what a 390-px phone shows at the title's size
# Lines that may coincide (a setting that changes nothing) stay apart by their dash as well as colour.
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")

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
            customdata=[[plain(s["label"]), s["token_start"], s["token_end"]] for s in chosen],
            hovertemplate="%{customdata[0]}<br>tokens %{customdata[1]}-%{customdata[2]}<extra>" + kind + "</extra>"))
    fig.update_layout(barmode="overlay", height=170, margin=dict(l=10, r=10, t=30, b=30),
                      title=f"Where things sit in the {prompt_tokens:,}-token prompt",
                      xaxis=dict(title="token position", range=[0, prompt_tokens]),
                      yaxis=dict(visible=False, range=[0, 1]), legend=dict(orientation="h", y=-0.5))
    return fitted(fig)


def _axis_labels(values) -> list[str]:
    return [f"{v:g}" for v in values]


def sweep_heatmap(rows: list[dict], lengths, depths, value: str = "correct", title: str = "") -> go.Figure:
    """Length x depth heatmap of accuracy (or mean score), cells filling in as they arrive.

    Hover shows the number of seeds and the 95% Wilson interval (for accuracy)."""
    cells = grid(rows, value)
    z, text = [], []
    for length in lengths:
        z_row, text_row = [], []
        for depth in depths:
            cell = cells.get((int(length), float(depth)))
            z_row.append(None if cell is None else cell["mean"])
            text_row.append("not run yet" if cell is None else
                            f"{cell['mean']:.2f} (n={cell['n']}, 95% CI {cell['low']:.2f}-{cell['high']:.2f})")
        z.append(z_row)
        text.append(text_row)
    fig = go.Figure(go.Heatmap(z=z, x=_axis_labels(depths), y=_axis_labels(lengths), zmin=0, zmax=1,
                               colorscale="RdYlGn", text=text, xgap=1, ygap=1, texttemplate="%{z:.2f}",
                               hovertemplate="length %{y}, depth %{x}%<br>%{text}<extra></extra>",
                               colorbar=dict(title="accuracy" if value == "correct" else value)))
    fig.update_layout(title=plain(title) or f"{'Accuracy' if value == 'correct' else value} by length and depth",
                      xaxis=dict(title="needle depth (%)", type="category"),
                      yaxis=dict(title="prompt tokens", type="category"), height=380,
                      margin=dict(l=60, r=10, t=50, b=50))
    return fitted(fig)


def difference_heatmap(rows_a: list[dict], rows_b: list[dict], lengths, depths, value: str = "correct") -> go.Figure:
    """B minus A per cell (mean over seeds)."""
    a, b = grid(rows_a, value), grid(rows_b, value)
    z = [[(b[(int(n), float(d))]["mean"] - a[(int(n), float(d))]["mean"])
          if (int(n), float(d)) in a and (int(n), float(d)) in b else None for d in depths] for n in lengths]
    fig = go.Figure(go.Heatmap(z=z, x=_axis_labels(depths), y=_axis_labels(lengths), zmin=-1, zmax=1,
                               colorscale="RdBu", xgap=1, ygap=1,
                               hovertemplate="length %{y}, depth %{x}%<br>B - A = %{z:.2f}<extra></extra>"))
    fig.update_layout(title="Difference: B minus A", xaxis=dict(title="needle depth (%)", type="category"),
                      yaxis=dict(title="prompt tokens", type="category"), height=380,
                      margin=dict(l=60, r=10, t=50, b=50))
    return fitted(fig)


def position_curve(rows: list[dict], value: str = "correct") -> go.Figure:
    """Accuracy against depth, one line per length: the lost-in-the-middle U-curve."""
    fig = go.Figure()
    for number, length in enumerate(sorted({int(r["length"]) for r in rows})):
        curve = by_depth(rows, length, value)
        fig.add_trace(go.Scatter(x=list(curve), y=list(curve.values()), mode="lines+markers", name=f"{length}",
                                 line=dict(dash=DASHES[number % len(DASHES)])))
    overall = u_curve_indices(by_depth(rows, None, value))
    subtitle = ("" if overall["primacy"] is None else
                f"<br><sup>all lengths: primacy {overall['primacy']:+.2f}, recency {overall['recency']:+.2f} "
                f"(ends minus the 25-75% mean, {overall['middle_mean']:.2f})</sup>")
    fig.update_layout(title="Accuracy by needle depth" + subtitle, xaxis=dict(title="needle depth (%)"),
                      yaxis=dict(title="accuracy" if value == "correct" else value, range=[-0.05, 1.05]),
                      legend=dict(title="prompt tokens"), height=360, margin=dict(l=60, r=10, t=50, b=50))
    return fitted(fig)


def length_curve(rows: list[dict], threshold: float | None = None, value: str = "correct") -> go.Figure:
    """Accuracy against length with the effective context length marked and its rule stated."""
    curve = by_length(rows, value)
    effective = effective_length(curve, threshold)
    fig = go.Figure(go.Scatter(x=list(curve), y=list(curve.values()), mode="lines+markers", name="accuracy"))
    if effective["threshold"] is not None:
        fig.add_hline(y=effective["threshold"], line_dash="dot",
                      annotation_text=f"threshold {effective['threshold']:.2f}: {effective['rule']}")
    if effective["effective_length"] is not None:
        fig.add_vline(x=effective["effective_length"], line_color="#2ca02c",
                      annotation_text=f"effective length {effective['effective_length']} (RULER)")
    if effective["first_failure_length"] not in (None, effective["effective_length"]):
        fig.add_vline(x=effective["first_failure_length"], line_color="#2ca02c", line_dash="dash",
                      annotation_text=f"before the first failure {effective['first_failure_length']}",
                      annotation_position="bottom right")
    fig.update_layout(title="Accuracy by context length", xaxis=dict(title="prompt tokens"),
                      yaxis=dict(title="accuracy" if value == "correct" else value, range=[-0.05, 1.05]),
                      height=360, margin=dict(l=60, r=10, t=50, b=50))
    return fitted(fig)


def token_probabilities(tokens: list[dict]) -> go.Figure:
    """Each generated token's probability, with the top alternatives on hover, and the entropy."""
    fig = go.Figure()
    hover = ["<br>".join(f"{plain(repr(alt))}: {p:.3f}" for alt, p in t.get("top", [])) for t in tokens]
    fig.add_trace(go.Bar(x=list(range(len(tokens))), y=[t["prob"] for t in tokens], name="probability",
                         text=[plain(t["text"]) for t in tokens], customdata=hover,
                         hovertemplate="%{text}<br>p=%{y:.3f}<br>%{customdata}<extra></extra>"))
    if tokens and "entropy" in tokens[0]:
        fig.add_trace(go.Scatter(x=list(range(len(tokens))), y=[t["entropy"] for t in tokens], name="entropy (nats)",
                                 yaxis="y2", mode="lines+markers"))
    fig.update_layout(title="Probability of each generated token", height=320, margin=dict(l=50, r=50, t=50, b=40),
                      xaxis=dict(title="new token"), yaxis=dict(title="probability", range=[0, 1]),
                      yaxis2=dict(title="entropy", overlaying="y", side="right", showgrid=False),
                      legend=dict(orientation="h", y=-0.25))
    return fitted(fig)


def run_figures(run: dict) -> list[go.Figure]:
    """The figures a stored run shows, rebuilt from its stored outputs alone (no model needed)."""
    outputs, kind = run["outputs"], run["kind"]
    if kind == "sweep":
        spec = run["inputs"]["sweep"]
        cells = outputs["cells"]
        value = "correct" if spec.get("mode", "generate") == "generate" else "score"
        threshold = outputs.get("effective", {}).get("threshold") if "fixed" in outputs.get(
            "effective", {}).get("rule", "") else None
        return [sweep_heatmap(cells, spec["lengths"], spec["depths"], value, f"{spec['task']} (stored)"),
                position_curve(cells, value), length_curve(cells, threshold, value)]
    if kind == "conflicts":
        return [conflict_bars(outputs["conflict_summary"])]
    if kind == "sift":
        return [sift_timeline(outputs["stages"], outputs["resolved_at"])]
    if kind == "sift_benchmark":
        return [sift_benchmark_bars(outputs["summary"])]
    figs = []
    if outputs.get("spans"):
        figs.append(needle_strip(outputs["spans"], outputs["prompt_tokens"]))
    tokens = outputs.get("tokens") or (outputs.get("generation") or {}).get("tokens")
    if tokens:
        figs.append(token_probabilities(tokens))
    attention = outputs.get("attention")
    if attention:
        figs.append(attention_profile(attention["profile"], outputs.get("spans", [])))
        layers = attention.get("layers")
        figs.append(layer_head_map(attention["needle_mass"], layers=layers) if "needle_mass" in attention else
                    layer_position_map(attention["layer_position"], len(attention["profile"]), layers=layers))
    return figs


def mask_picture(rows: list[list[bool]], positions: list[int], title: str) -> go.Figure:
    """Which keys each query sees, sampled on a grid of positions (black: visible)."""
    fig = go.Figure(go.Heatmap(z=[[1 if v else 0 for v in row] for row in rows], x=positions, y=positions,
                               colorscale=[[0, "#f7f7f7"], [1, "#222222"]], showscale=False,
                               hovertemplate="query %{y}, key %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=plain(title) + "<br><sup>black: the query sees the key; light: masked</sup>", height=420,
                      margin=dict(l=60, r=10, t=60, b=50), xaxis=dict(title="key position", constrain="domain"),
                      yaxis=dict(title="query position", autorange="reversed", scaleanchor="x"))
    return fitted(fig)


def rope_curves(curves: dict[str, dict[str, list[float]]], trained: int, factor: float) -> list[go.Figure]:
    """Frequency ratio theta'/theta per pair, wavelength per pair against L and s*L, and the long-term
    decay bound, one line per RoPE setting (curves[name] holds pair, ratio, wavelength, distance, decay)."""
    ratio, wave, decay = go.Figure(), go.Figure(), go.Figure()
    for number, (name, c) in enumerate(curves.items()):
        line = dict(dash=DASHES[number % len(DASHES)])
        ratio.add_trace(go.Scatter(x=c["pair"], y=c["ratio"], mode="lines+markers", name=plain(name), line=line))
        wave.add_trace(go.Scatter(x=c["pair"], y=c["wavelength"], mode="lines+markers", name=plain(name), line=line))
        decay.add_trace(go.Scatter(x=c["distance"], y=c["decay"], mode="lines", name=plain(name), line=line))
    wave.add_hline(y=trained, line_dash="dot", annotation_text=f"L = {trained}")
    if factor != 1:
        wave.add_hline(y=trained * factor, line_dash="dash", annotation_text=f"s x L = {trained * factor:g}")
    ratio.update_layout(title="Frequency ratio theta'/theta per dimension pair", xaxis_title="pair i",
                        yaxis=dict(title="theta'/theta", type="log"), height=340)
    wave.update_layout(title="Wavelength 2 pi / theta' per pair", xaxis_title="pair i",
                       yaxis=dict(title="tokens", type="log"), height=340)
    decay.update_layout(title="Long-term decay: bound on the relative attention score", xaxis=dict(
        title="relative distance (tokens)", type="log"), yaxis_title="relative upper bound", height=340)
    return [fitted(fig) for fig in (ratio, wave, decay)]


def nll_stream(curves: dict[str, list[float]], smooth: int = 32) -> go.Figure:
    """Per-token negative log-likelihood over a long stream (moving average), one line per setting."""
    fig = go.Figure()
    for number, (name, values) in enumerate(curves.items()):
        averaged = [sum(values[max(0, i - smooth + 1):i + 1]) / len(values[max(0, i - smooth + 1):i + 1])
                    for i in range(len(values))]
        fig.add_trace(go.Scatter(y=averaged, mode="lines", name=plain(name), line=dict(dash=DASHES[number % len(DASHES)])))
    fig.update_layout(title=f"Per-token negative log-likelihood ({smooth}-token moving average)",
                      xaxis_title="token position", yaxis_title="NLL (nats)", height=360)
    return fitted(fig)


def _token_labels(tokens: list[str] | None, positions) -> list[str] | None:
    return None if not tokens else [plain(repr(tokens[p])) if p < len(tokens) else "" for p in positions]


def attention_profile(profile: list[float], spans: list[dict], sinks: int = 4, log: bool = False,
                      title: str = "Attention over the context", tokens: list[str] | None = None) -> go.Figure:
    """Attention over context positions with needles and documents marked, each token's text on hover
    when `tokens` are given; the first `sinks` tokens get their own trace so their mass does not wash
    out the scale."""
    fig = go.Figure()
    hover = "key %{x} %{text}: %{y:.5f}<extra></extra>"
    rest, first = range(sinks, len(profile)), range(min(sinks, len(profile)))
    fig.add_trace(go.Scatter(x=list(rest), y=profile[sinks:], mode="lines", name="attention", line=dict(width=1),
                             text=_token_labels(tokens, rest), hovertemplate=hover))
    fig.add_trace(go.Bar(x=list(first), y=profile[:sinks], name=f"first {sinks} (sinks)", marker_color="#7f7f7f",
                         text=_token_labels(tokens, first), hovertemplate=hover, textposition="none"))
    for span in spans:
        if span["kind"] in ("needle", "gold", "distractor"):
            fig.add_vrect(x0=span["token_start"], x1=span["token_end"], fillcolor=KIND_COLOURS[span["kind"]],
                          opacity=0.3, line_width=0, annotation_text=span["kind"], annotation_position="top left")
    fig.update_layout(title=f"{title} (sink mass {sum(profile[:sinks]):.2f})", height=330,
                      xaxis_title="key position (token)", yaxis=dict(title="attention", type="log" if log else "linear"),
                      margin=dict(l=60, r=10, t=50, b=40), legend=dict(orientation="h", y=-0.3))
    return fitted(fig)


def _coloured(z: list[list[float]], log: bool) -> tuple[list[list[float]], str]:
    """Heatmap values on a linear or log10 colour scale, with the colour bar's title."""
    if not log:
        return z, "mass"
    return [[math.log10(max(v, 1e-6)) for v in row] for row in z], "log10 mass"


def layer_head_map(mass: list[list[float]], title: str = "Attention mass on the needle", log: bool = False,
                   value: str = "mass", layers: list[str] | None = None) -> go.Figure:
    """Layers down, heads across; `layers` labels local and global layers where a model mixes them."""
    z, scale = _coloured(mass, log)
    scale = scale.replace("mass", value)
    fig = go.Figure(go.Heatmap(z=z, y=layers, colorscale="Viridis", colorbar=dict(title=scale), customdata=mass,
                               hovertemplate="layer %{y}, head %{x}: %{customdata:.4f}<extra></extra>"))
    fig.update_layout(title=_layer_note(title, layers), xaxis_title="head", yaxis_title="layer", height=420,
                      margin=dict(l=70, r=10, t=50, b=40))
    return fitted(fig)


def _layer_note(title: str, layers: list[str] | None) -> str:
    if not layers:
        return title
    return title + "<br><sup>local layers see a sliding window; global layers see the whole prompt</sup>"


def layer_position_map(rows: list[list[float]], keys: int, log: bool = False,
                       tokens: list[str] | None = None, layers: list[str] | None = None) -> go.Figure:
    """Attention mass per layer over binned key positions; the centre token's text on hover; local and
    global layers labelled where a model mixes them."""
    bins = len(rows[0]) if rows else 1
    z, scale = _coloured(rows, log)
    centres = [min(keys - 1, round((b + 0.5) * keys / bins)) for b in range(bins)]
    labels = _token_labels(tokens, centres) or [""] * bins
    fig = go.Figure(go.Heatmap(z=z, x=centres, y=layers, colorscale="Viridis", customdata=rows,
                               colorbar=dict(title=scale), text=[labels] * len(rows),
                               hovertemplate="layer %{y}, around token %{x} %{text}: %{customdata:.4f}<extra></extra>"))
    fig.update_layout(title=_layer_note("Attention mass by layer and position (binned)", layers),
                      xaxis_title="key position", yaxis_title="layer", height=380, margin=dict(l=70, r=10, t=50, b=40))
    return fitted(fig)


def segment_bars(masses: dict[str, float]) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(masses.values()), y=list(masses), orientation="h",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title="Attention mass per segment", xaxis_title="mass", height=420,
                      yaxis=dict(autorange="reversed"), margin=dict(l=200, r=10, t=50, b=40))
    return fitted(fig)


def decoding_tokens(runs: dict[str, list[dict]]) -> go.Figure:
    """Per method, the chosen token's probability at each step (alternatives on hover) and the entropy."""
    fig = go.Figure()
    for method, tokens in runs.items():
        steps = list(range(len(tokens)))
        hover = [f"{plain(repr(t['text']))}<br>" + "<br>".join(
            f"{plain(repr(alt))}: {p:.3f}" for alt, p in t.get("top", [])) for t in tokens]
        fig.add_trace(go.Scatter(x=steps, y=[t["prob"] for t in tokens], mode="lines+markers",
                                 name=plain(f"{method}: p(token)"), customdata=hover, legendgroup=method,
                                 hovertemplate="step %{x}: p=%{y:.3f}<br>%{customdata}<extra>"
                                 + plain(method) + "</extra>"))
        fig.add_trace(go.Scatter(x=steps, y=[t["entropy"] for t in tokens], mode="lines", yaxis="y2",
                                 line=dict(dash="dot"), name=plain(f"{method}: entropy"), legendgroup=method,
                                 hovertemplate="step %{x}: entropy %{y:.2f} nats<extra></extra>"))
    fig.update_layout(title="Chosen token's probability (solid) and entropy (dotted) per step", height=380,
                      margin=dict(l=50, r=50, t=50, b=40), xaxis=dict(title="new token"),
                      yaxis=dict(title="probability", range=[0, 1.02]),
                      yaxis2=dict(title="entropy (nats)", overlaying="y", side="right", showgrid=False),
                      legend=dict(orientation="h", y=-0.3))
    return fitted(fig)


def cad_alpha(runs: dict[str, list[dict]]) -> go.Figure:
    """alpha at each step for context-aware methods (constant for CAD, JSD for AdaCAD), token on hover."""
    fig = go.Figure()
    for method, tokens in runs.items():
        fig.add_trace(go.Scatter(x=list(range(len(tokens))), y=[t["extra"]["alpha"] for t in tokens],
                                 mode="lines+markers", name=plain(method), text=[plain(repr(t["text"])) for t in tokens],
                                 hovertemplate="step %{x}: alpha %{y:.3f}<br>%{text}<extra></extra>"))
    fig.update_layout(title="Context weight alpha per step (AdaCAD: JSD, at most ln 2 = 0.693)", height=300,
                      margin=dict(l=50, r=10, t=50, b=40), xaxis=dict(title="new token"),
                      yaxis=dict(title="alpha", rangemode="tozero"))
    return fitted(fig)


def conflict_bars(summary: list[dict]) -> go.Figure:
    """How often each method answered from the context, from memory, or neither."""
    fig = go.Figure()
    methods = [plain(row["method"]) for row in summary]
    for key, colour in (("follows_context", "#2ca02c"), ("follows_memory", "#d62728"), ("neither", "#c7c7c7")):
        fig.add_trace(go.Bar(x=methods, y=[row[key] for row in summary], name=key.replace("_", " "),
                             marker_color=colour))
    fig.update_layout(barmode="stack", title="Knowledge conflicts: whom the answer follows", height=340,
                      yaxis=dict(title="share of items", range=[0, 1]), margin=dict(l=50, r=10, t=50, b=80))
    return fitted(fig)


def knob_curve(summary: list[dict], layer: int) -> go.Figure:
    """The share of conflict answers that follow the context (and the familiar fact) against the knob."""
    fig = go.Figure()
    knobs = [row["knob"] for row in summary]
    for key, colour in (("follows_context", "#2ca02c"), ("follows_memory", "#d62728")):
        fig.add_trace(go.Scatter(x=knobs, y=[row[key] for row in summary], mode="lines+markers",
                                 name=key.replace("_", " "), line=dict(color=colour)))
    fig.update_layout(title=f"The context knob (layer {layer}): whom the answer follows", height=340,
                      xaxis=dict(title="knob"), yaxis=dict(title="share of items", range=[0, 1]),
                      margin=dict(l=50, r=10, t=50, b=50))
    return fitted(fig)


STAGE_COLOURS = {"fallback": "#7f7f7f", "stage 1": "#1f77b4", "stage 2": "#ff7f0e", "stage 3": "#9467bd"}


def sift_timeline(stages: list[dict], resolved_at: str | None = None) -> go.Figure:
    """Each model call of a SIFT run as a bar along time, coloured by stage; tokens and answer on hover."""
    fig, start = go.Figure(), 0.0
    for number, stage in enumerate(stages):
        agrees = "" if stage.get("agrees") is None else f"<br>agrees: {stage['agrees']}"
        fig.add_trace(go.Bar(
            y=[f"{number + 1}. {stage['step']}"], x=[max(stage["seconds"], 0.01)], base=[start], orientation="h",
            marker_color=STAGE_COLOURS.get(stage["stage"], "#333"), name=stage["stage"], legendgroup=stage["stage"],
            showlegend=stage["stage"] not in {s["stage"] for s in stages[:number]},
            hovertemplate=(f"{stage['stage']}: {stage['step']}<br>{stage['prompt_tokens']} prompt + "
                           f"{stage['new_tokens']} new tokens<br>{stage['seconds']:.2f} s<br>answer: "
                           f"{plain(str(stage.get('answer')))}{agrees}<extra></extra>")))
        start += stage["seconds"]
    fig.update_layout(title=f"SIFT stages over time (resolved at: {resolved_at or 'running'})",
                      height=120 + 28 * len(stages), barmode="overlay", margin=dict(l=130, r=10, t=50, b=40),
                      xaxis=dict(title="seconds"), yaxis=dict(autorange="reversed"))
    return fitted(fig)


def sift_benchmark_bars(summary: dict) -> go.Figure:
    """Accuracy of the query-alone baseline and of SIFT, and the share of items resolved at each stage."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=["baseline (query alone)", "SIFT"], y=[summary["baseline_accuracy"],
                                                                    summary["sift_accuracy"]],
                         name="accuracy", marker_color=["#7f7f7f", "#2ca02c"]))
    shares = summary["resolved_share"]
    fig.add_trace(go.Bar(x=[f"resolved: {s}" for s in shares], y=list(shares.values()), name="share of items",
                         marker_color=[STAGE_COLOURS[s] for s in shares]))
    fig.update_layout(title=f"SIFT mini benchmark ({summary['items']} items)", height=340,
                      yaxis=dict(range=[0, 1], title="share"), margin=dict(l=50, r=10, t=50, b=60))
    return fitted(fig)


def sticker_attention_bars(attention: dict) -> go.Figure:
    """Per layer, the answer's attention mass on the Sticker and on the original problem text."""
    fig = go.Figure()
    for name, colour in (("sticker", "#2ca02c"), ("question", "#1f77b4")):
        layers = attention[f"{name}_by_layer"]
        fig.add_trace(go.Scatter(x=list(range(len(layers))), y=layers, mode="lines+markers", name=name,
                                 line=dict(color=colour)))
    fig.update_layout(title=f"Answer's attention: Sticker {attention['sticker_mass']:.3f} vs problem "
                      f"{attention['question_mass']:.3f} (mean over layers and heads)", height=320,
                      xaxis=dict(title="layer"), yaxis=dict(title="attention mass", rangemode="tozero"),
                      margin=dict(l=50, r=10, t=50, b=40))
    return fitted(fig)


def head_map(result: dict, spans: list[dict] | None = None, log: bool = False) -> go.Figure:
    """One head's query x key attention: token by token (token texts on hover) or pooled into bins."""
    z, scale = _coloured(result["map"], log)
    side, tokens, labels = len(result["map"]), result["tokens"], result.get("labels")
    if labels:
        text = [[f"query {i} {plain(repr(labels[i]))} -> key {j} {plain(repr(labels[j]))}: "
                 f"{result['map'][i][j]:.4f}" for j in range(side)] for i in range(side)]
        trace = go.Heatmap(z=z, text=text, hovertemplate="%{text}<extra></extra>", colorscale="Viridis",
                           colorbar=dict(title=scale))
        subtitle = "token by token"
    else:
        centres = [round((b + 0.5) * tokens / side) for b in range(side)]
        trace = go.Heatmap(z=z, x=centres, y=centres, customdata=result["map"], colorscale="Viridis",
                           colorbar=dict(title=scale),
                           hovertemplate="queries near %{y}, keys near %{x}: %{customdata:.4f}<extra></extra>")
        subtitle = f"pooled {tokens} -> {side} bins"
    fig = go.Figure(trace)
    for span in spans or []:  # both axes are in token positions
        if span["kind"] in ("needle", "gold", "distractor"):
            fig.add_vrect(x0=span["token_start"], x1=span["token_end"], line=dict(color=KIND_COLOURS[span["kind"]], width=1),
                          annotation_text=span["kind"], annotation_position="top left")
    fig.update_layout(title=f"Layer {result['layer']}, head {result['head']}: query x key ({subtitle})",
                      xaxis_title="key", yaxis=dict(title="query", autorange="reversed"), height=560,
                      margin=dict(l=60, r=10, t=50, b=40))
    return fitted(fig)


def variant_curves(rows: list[dict], variants: list[str], value: str = "score") -> go.Figure:
    """Score against depth, one line per variant (setting, task or builder parameter)."""
    fig = go.Figure()
    for number, variant in enumerate(variants):
        curve = by_depth([r for r in rows if r["variant"] == variant], None, value)
        fig.add_trace(go.Scatter(x=list(curve), y=list(curve.values()), mode="lines+markers", name=plain(variant),
                                 line=dict(dash=DASHES[number % len(DASHES)])))
    fig.update_layout(title="Score by depth of the needle or gold document", xaxis=dict(title="depth (%)"),
                      yaxis=dict(title=f"mean {value}", range=[-0.05, 1.05]), height=360,
                      legend=dict(orientation="h", y=-0.3), margin=dict(l=60, r=10, t=50, b=60))
    return fitted(fig)


def variant_bars(rows: list[dict], variants: list[str], value: str = "score") -> go.Figure:
    """Mean score per variant, each probe's answer on hover."""
    means, hovers = [], []
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        means.append(sum(float(r[value]) for r in mine) / len(mine) if mine else None)
        hovers.append("<br>".join(f"seed {r['seed']}: {plain(repr(str(r['answer'])[:60]))}" for r in mine[:8]))
    fig = go.Figure(go.Bar(x=[plain(v) for v in variants], y=means, customdata=hovers, marker_color="#1f77b4",
                           text=[None if m is None else f"{m:.2f}" for m in means], textposition="outside",
                           hovertemplate="%{x}: %{y:.2f}<br>%{customdata}<extra></extra>"))
    fig.update_layout(title=f"Mean {value} per setting", yaxis=dict(title=f"mean {value}", range=[0, 1.15]),
                      height=340, margin=dict(l=50, r=10, t=50, b=80))
    return fitted(fig)


def layer_mass_bars(models: dict[str, dict]) -> go.Figure:
    """Per layer, the question's attention mass on a far needle, one colour per model and layer kind."""
    fig = go.Figure()
    for name, far in models.items():
        labels = far["layers"] or [f"{i} global" for i in range(len(far["mass"]))]
        for kind in ("global", "local"):
            chosen = [(i, m) for i, (label, m) in enumerate(zip(labels, far["mass"])) if label.endswith(kind)]
            if chosen:
                fig.add_trace(go.Bar(x=[i for i, _ in chosen], y=[m for _, m in chosen], name=plain(f"{name}, {kind}"),
                                     hovertemplate="layer %{x}: %{y:.4f}<extra>" + plain(f"{name}, {kind}") + "</extra>"))
    fig.update_layout(title="Question's attention on a far needle, per layer", barmode="group", height=340,
                      xaxis=dict(title="layer"), yaxis=dict(title="mass (mean over heads)"),
                      margin=dict(l=60, r=10, t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fitted(fig)


def masking_bars(rows: list[dict]) -> go.Figure:
    """The gold answer's log-probability with no heads, the top retrieval heads, or random heads masked."""
    fig = go.Figure(go.Bar(x=[plain(r["setting"]) for r in rows], y=[r["gold_logprob"] for r in rows],
                           marker_color=["#2ca02c" if r["correct"] else "#d62728" for r in rows],
                           text=["found" if r["correct"] else "missed" for r in rows], textposition="outside",
                           customdata=[plain(repr(r["answer"][:60])) for r in rows],
                           hovertemplate="%{x}<br>gold log p %{y:.2f}<br>answer %{customdata}<extra></extra>"))
    fig.update_layout(title="Gold answer's log-probability (green: found, red: missed)", height=340,
                      yaxis_title="log p(gold)", margin=dict(l=50, r=10, t=50, b=80))
    return fitted(fig)


def diversity_bars(runs: list[dict]) -> go.Figure:
    """distinct-2 and pairwise overlap of each method's beams, the beams' texts on hover."""
    fig, scored = go.Figure(), [run for run in runs if run.get("diversity")]
    methods = [plain(run["method"].split(":")[0]) for run in scored]
    hover = ["<br>".join(plain(repr(beam["text"][:70])) for beam in run["beams"]) for run in scored]
    for key, colour in (("distinct_2", "#2ca02c"), ("pairwise_overlap", "#d62728")):
        fig.add_trace(go.Bar(x=methods, y=[run["diversity"][key] for run in scored], name=key.replace("_", " "),
                             marker_color=colour, customdata=hover,
                             hovertemplate="%{x}: %{y:.2f}<br>%{customdata}<extra></extra>"))
    fig.update_layout(barmode="group", title="How different the returned beams are", height=340,
                      yaxis=dict(range=[0, 1]), margin=dict(l=50, r=10, t=50, b=60))
    return fitted(fig)


def card_figures(study: str, data: dict) -> list[go.Figure]:
    """A gallery card's figures from its stored (or live, partial) result."""
    if study == "grid":
        rows, variants = data["rows"], data["variants"]
        if len(data["lengths"]) > 1 and len(data["depths"]) > 1:
            return [sweep_heatmap(rows, data["lengths"], data["depths"], "score", f"{variants[0]}: score by length and depth")]
        if len(data["depths"]) > 1:
            return [variant_curves(rows, variants)]
        return [variant_bars(rows, variants)]
    if study == "models":
        heatmaps = [sweep_heatmap([r for r in data["rows"] if r["variant"] == name], data["lengths"], data["depths"],
                                  "score", f"{name}: score by length and depth") for name in data["variants"]]
        return heatmaps + [layer_mass_bars(data["layer_mass"])]
    if study == "nll":
        return [nll_stream(data["curves"])]
    if study == "heads":
        return [layer_head_map(data["scores"], "Retrieval score of every head (copying the answer)", value="score"),
                masking_bars(data["rows"])]
    if study == "conflicts":
        return [conflict_bars(data["summary"])]
    if study == "knob":
        return [knob_curve(data["summary"], data["layer"])]
    if study == "decode":
        return [diversity_bars(data["runs"])]
    return [sift_timeline(data["stages"], data.get("resolved_at"))]
