"""The shared configuration panel: model, quantization, dtype, chat template, budget, RoPE, mask, decoding.

Every tab reads the same inputs and turns them into one `RunConfig` with `config_from_values`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr

from engines.config.errors import LabError
from engines.config.specs import DTYPES, EMBEDDED_MODEL, QUANT_4BIT_TYPES, QUANTS, ModelSpec, RunConfig, SpecError
from engines.context.masks import MaskSpec
from engines.context.rope import RopeSpec
from engines.decoding.methods import DecodingSpec
from engines.model.loading import MANAGER, ModelError, cpu_supports_bf16


@dataclass
class ConfigInputs:
    """The panel's components, in the order `config_from_values` takes their values."""

    model: gr.Dropdown
    quant: gr.Radio
    quant_4bit_type: gr.Radio
    dtype: gr.Radio
    chat_template: gr.Checkbox
    max_new_tokens: gr.Number
    rope: gr.Textbox
    mask: gr.Textbox
    decoding: gr.Textbox
    status: gr.Markdown  # shows the loaded model; not a config value

    def all(self) -> list:
        return [self.model, self.quant, self.quant_4bit_type, self.dtype, self.chat_template,
                self.max_new_tokens, self.rope, self.mask, self.decoding]


def config_from_values(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope="default",
                       mask="causal", decoding="greedy") -> RunConfig:
    """The RunConfig for the panel's values; a bad value becomes a gr.Error saying what to change."""
    try:
        if max_new_tokens is None or float(max_new_tokens) != int(max_new_tokens):
            raise SpecError("Max new tokens must be a whole number from 1 to 4096.")
        spec = ModelSpec(model=(model or "").strip(), quant=quant, quant_4bit_type=quant_4bit_type, dtype=dtype)
        return RunConfig(model=spec, chat_template=bool(chat_template), max_new_tokens=int(max_new_tokens),
                         rope=RopeSpec.parse(rope or "default"), mask=MaskSpec.parse(mask or "causal"),
                         decoding=DecodingSpec.parse(decoding or "greedy"))
    except (SpecError, ValueError, TypeError) as exc:
        raise gr.Error(str(exc)) from exc


@contextmanager
def said_to_user():
    """Engine errors a user can act on become gr.Error sentences (never a traceback)."""
    try:
        yield
    except LabError as exc:
        raise gr.Error(str(exc)) from exc


def loaded_model(config: RunConfig, progress: gr.Progress):
    """The model for `config`, loading it with progress; load failures become gr.Error."""
    try:
        return MANAGER.get(config.model, lambda fraction, message: progress(fraction, desc=message))
    except ModelError as exc:
        raise gr.Error(str(exc)) from exc


def describe_loaded() -> str:
    loaded = MANAGER.loaded
    if loaded is None:
        return "No model loaded yet: it loads on the first run, or press **Load**."
    info = loaded.describe()
    return (f"**Loaded:** `{info['model']}` on **{info['device']}**, dtype **{info['dtype_reason']}**, "
            f"quantization **{info['quant']}** | {info['layers']} layers x {info['heads']} heads, "
            f"{info['max_positions']} positions | load {info['load_seconds']} s | "
            f"memory {info['footprint_mb']} MB")


def load(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope, mask, decoding,
         progress=gr.Progress()) -> str:
    loaded_model(config_from_values(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope, mask,
                                    decoding), progress)
    return describe_loaded()


def build() -> ConfigInputs:
    """Render the panel (an accordion above the tabs) and wire its Load button."""
    auto_note = ("this CPU has fast bfloat16 (AMX/AVX512-BF16), so auto picks **bf16**, 3-5x faster than fp32"
                 if cpu_supports_bf16() else "auto picks fp32 on this CPU (no fast bfloat16)")
    with gr.Accordion("Model and run configuration (shared by every tab)", open=True):
        with gr.Row():
            model = gr.Dropdown([EMBEDDED_MODEL], value=EMBEDDED_MODEL, allow_custom_value=True,
                                label="Model", info="The embedded model, a Hub id (owner/name) or a local directory",
                                scale=3)
            quant = gr.Radio(list(QUANTS), value="none", label="Quantization (bitsandbytes)")
            quant_4bit_type = gr.Radio(list(QUANT_4BIT_TYPES), value="nf4", label="4-bit type")
            dtype = gr.Radio(list(DTYPES), value="auto", label="dtype", info=auto_note)
        with gr.Row():
            chat_template = gr.Checkbox(True, label="Apply the chat template")
            max_new_tokens = gr.Number(32, precision=0, minimum=1, maximum=4096, label="Max new tokens")
            rope = gr.Textbox("default", label="RoPE", info="KIND[:factor[,key=value]], e.g. yarn:2 (Context tab)")
            mask = gr.Textbox("causal", label="Attention mask", info="KIND[:key=value,...], e.g. sinks:window=1024")
            decoding = gr.Textbox("greedy", label="Decoding", info="METHOD[:key=value,...], e.g. beam:num_beams=4 "
                                  "(Decoding tab)")
            load_button = gr.Button("Load", variant="secondary")
        status = gr.Markdown(describe_loaded())
    inputs = ConfigInputs(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope, mask, decoding, status)
    load_button.click(load, inputs.all(), status, api_name="load_model", concurrency_id="model")
    return inputs
