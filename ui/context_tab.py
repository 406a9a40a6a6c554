"""Context tab: pictures of the chosen RoPE scaling and attention mask, the per-token NLL over a long
stream (the StreamingLLM picture) and the measured cost of each mask."""
from __future__ import annotations

import json

import gradio as gr

from engines.attention.state import current
from engines.config.kinds import entries
from engines.config.specs import MaskSpec, RopeSpec
from engines.context.rope import rope_geometry
from engines.context.run import mask_grid, nll_curves, prose_stream, rope_curves
from engines.model.jobs import model_job
from engines.model.loading import MANAGER
from engines.probes.haystack import ASSETS
from engines.probes.runner import max_prompt_tokens
from ui import figures
from ui.model_panel import ConfigInputs, Panel, loaded_model, said_to_user
from ui.progress import Clock, seconds_for
from ui.text import Refusal

MASK_COSTS = ASSETS / "mask_costs.json"


def cost_table() -> str:
    if not MASK_COSTS.exists():
        return "Prefill cost per mask: not measured yet (run `python -m bench.context`)."
    costs = json.loads(MASK_COSTS.read_text())
    rows = "\n".join(f"| {kind} | {ratio:.2f}x |" for kind, ratio in costs["ratios"].items())
    return (f"Prefill time at {costs['tokens']} tokens relative to plain causal attention "
            f"({costs['machine']}, `python -m bench.context`):\n\n| mask | time |\n|---|---|\n{rows}")


def pictures(length, *values):
    """The mask as a picture, and the chosen RoPE's frequency ratio, wavelength and decay against default."""
    panel = Panel.of(values)
    run_config = panel.config()
    if length is None or not 16 <= int(length) <= 1_000_000:
        raise Refusal("The picture length must be between 16 and 1,000,000 tokens.")
    base, dim, trained, layers = 1e5, 64, 8192, "every layer"  # the embedded model's, unless one is loaded
    if MANAGER.loaded is not None:
        model = MANAGER.loaded.model
        base, dim, trained, layers = rope_geometry(current(model.config).original_rotary or model.model.rotary_emb)
    rows, positions = mask_grid(run_config.mask, int(length), trained=trained)
    curves = {f"default ({layers}, theta {base:g})": rope_curves(RopeSpec(), base, dim, trained)}
    if run_config.rope.kind == "nope":  # same frequencies; the chosen layers skip the rotation altogether
        curves[f"{panel.rope}: the other layers (the chosen ones do not rotate)"] = curves[next(iter(curves))]
    elif run_config.rope.kind != "default":
        curves[panel.rope or "chosen"] = rope_curves(run_config.rope, base, dim, trained)
    ratio, wave, decay = figures.rope_curves(curves, trained, run_config.rope.factor)
    title = f"{run_config.mask.kind} mask, {int(length)} tokens (sampled {len(positions)}x{len(positions)})"
    return figures.mask_picture(rows, positions, title), ratio, wave, decay


def nll(tokens, *values, progress=gr.Progress()):
    """Per-token NLL over a prose stream, plain causal against the panel's RoPE and mask."""
    panel = Panel.of(values)
    run_config = panel.config()
    loaded = loaded_model(run_config, progress)
    if tokens is None or not 64 <= int(tokens) <= max_prompt_tokens(loaded):
        raise Refusal(f"The stream length must be between 64 and {max_prompt_tokens(loaded)} tokens.")
    ids = prose_stream(loaded.tokenizer, int(tokens))
    settings = [("plain causal, default RoPE", RopeSpec(), MaskSpec())]
    if run_config.mask.kind != "causal" or run_config.rope.kind != "default":
        settings.append((f"{panel.rope} / {panel.mask}", run_config.rope, run_config.mask))
    clock = Clock(progress, len(settings), seconds_for(loaded, run_config, [int(tokens)] * len(settings)))
    with said_to_user():
        for curves in MANAGER.stream(run_config.model, model_job(nll_curves, ids, settings), seconds=clock.estimate):
            clock.step(len(curves), "settings")
            yield figures.nll_stream(curves)


def build(config: ConfigInputs) -> None:
    with gr.Tab("Context", id="context"):
        gr.Markdown("The RoPE and mask settings in the panel above apply to every probe and sweep. "
                    "Here you can see what they do. "
                    + " ".join(f"**{k}**: {v.description}." for k, v in entries("mask").items()))
        with gr.Row():
            picture_length = gr.Number(2048, precision=0, label="Mask picture: sequence length")
            stream_tokens = gr.Number(1500, precision=0, label="NLL stream: tokens of prose")
            draw = gr.Button("Draw RoPE and mask pictures")
            stream = gr.Button("Run the NLL stream", variant="primary")
            stream_stop = gr.Button("Cancel", variant="stop")
        with gr.Row():
            mask_plot = gr.Plot(label="Mask")
            ratio_plot = gr.Plot(label="Frequency ratio")
        with gr.Row():
            wave_plot = gr.Plot(label="Wavelength")
            decay_plot = gr.Plot(label="Long-term decay")
        nll_plot = gr.Plot(label="NLL over a long stream")
        gr.Markdown(cost_table())

    values = config.all()
    draw.click(pictures, [picture_length, *values], [mask_plot, ratio_plot, wave_plot, decay_plot],
               api_name="context_pictures")
    streamed = stream.click(nll, [stream_tokens, *values], nll_plot, api_name="context_nll", concurrency_id="model")
    stream_stop.click(None, cancels=[streamed], api_name=False)
