"""The shared configuration panel: model, quantization, dtype, chat template, budget, RoPE, mask, decoding.

Every tab passes the panel's inputs (`ConfigInputs.all()`) after its own; a handler reads them by
name with `Panel.of(values)` and turns them into one `RunConfig` with `Panel.config()`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import gradio as gr

from engines.config.errors import LabError
from engines.config.kinds import entries
from engines.config.policy import allowed_models, limits, public_mode
from engines.config.specs import (
    DTYPES,
    EMBEDDED_MODELS,
    KNOB_LIMIT,
    QUANT_4BIT_TYPES,
    QUANTS,
    DecodingSpec,
    MaskSpec,
    ModelSpec,
    RopeSpec,
    RunConfig,
    SpecError,
    TransformSpec,
)
from engines.model.loading import MANAGER, ModelError, cpu_supports_bf16
from ui.text import Refusal


@dataclass
class ConfigInputs:
    """The panel's components; `all()` is the one place that orders them (as `Panel`'s fields)."""

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
    transform: gr.Textbox  # after the others, so API clients written before it existed keep their positions
    knob: gr.Number

    def all(self) -> list:
        return [self.model, self.quant, self.quant_4bit_type, self.dtype, self.chat_template,
                self.max_new_tokens, self.rope, self.mask, self.decoding, self.transform, self.knob]


class Panel(NamedTuple):
    """The panel's values by name, as a handler receives them."""

    model: str
    quant: str
    quant_4bit_type: str
    dtype: str
    chat_template: bool
    max_new_tokens: float
    rope: str = "default"
    mask: str = "causal"
    decoding: str = "greedy"
    transform: str = "none"
    knob: float = 0.0

    @classmethod
    def of(cls, values) -> Panel:
        """`values`: the panel's inputs as gradio passes them (after the tab's own), in `ConfigInputs.all()` order."""
        return cls(*values)

    def config(self, **changes) -> RunConfig:
        """The RunConfig for these values with `changes` (by field name); a bad value becomes a gr.Error
        saying what to change."""
        panel = self._replace(**changes)
        try:
            if panel.max_new_tokens is None or float(panel.max_new_tokens) != int(panel.max_new_tokens):
                raise SpecError("Max new tokens must be a whole number from 1 to 4096.")
            limits().check_tokens(int(panel.max_new_tokens))
            spec = ModelSpec(model=(panel.model or "").strip(), quant=panel.quant,
                             quant_4bit_type=panel.quant_4bit_type, dtype=panel.dtype)
            config = RunConfig(model=spec, chat_template=bool(panel.chat_template),
                               max_new_tokens=int(panel.max_new_tokens), rope=RopeSpec.parse(panel.rope or "default"),
                               mask=MaskSpec.parse(panel.mask or "causal"),
                               decoding=DecodingSpec.parse(panel.decoding or "greedy"),
                               transform=TransformSpec.parse(panel.transform or "none"), knob=float(panel.knob or 0))
            limits().check_run(config)
            return config
        except (SpecError, ValueError, TypeError) as exc:
            raise Refusal(str(exc)) from exc


@contextmanager
def said_to_user():
    """Engine errors a user can act on become gr.Error sentences (never a traceback)."""
    try:
        yield
    except LabError as exc:
        raise Refusal(str(exc)) from exc


def loaded_model(config: RunConfig, progress: gr.Progress):
    """The model for `config`, loading it with progress; load failures become gr.Error."""
    try:
        return MANAGER.get(config.model, lambda fraction, message: progress(fraction, desc=message))
    except ModelError as exc:
        raise Refusal(str(exc)) from exc


STEPS = {"compiled": "static cache, compiled step", "static": "static cache", "dynamic": "growing cache"}


def describe_loaded() -> str:
    loaded = MANAGER.loaded
    if loaded is None:
        return "No model loaded yet: it loads on the first run, or press **Load**."
    info = loaded.describe()
    return (f"**Loaded:** `{info['model']}` on **{info['device']}**, dtype **{info['dtype_reason']}**, "
            f"quantization **{info['quant']}** | {info['layers']} layers x {info['heads']} heads, "
            f"{info['max_positions']} positions, {info['layer_kinds']} | load {info['load_seconds']} s | "
            f"memory {info['footprint_mb']} MB"
            + (f" | last run: prefill {speed['prefill_tokens_per_s']} tokens/s over {speed['computed_tokens']} tokens, "
               f"decode {speed['decode_tokens_per_s']} tokens/s ({STEPS[speed['steps']]})"
               if (speed := info["last_speed"]) else "")
            + ("" if info["chat_template"] else " | a base model: no chat template, prompts are raw text")
            + (f"\n\n{info['notice']}" if info["notice"] else ""))


def load(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope, mask, decoding, transform="none",
         knob=0, progress=gr.Progress()) -> str:
    if public_mode():
        raise Refusal("On this shared Space nobody switches the loaded model: each run loads the model it asks "
                      "for, in turn, through the queue. Choose the model above and run.")
    loaded_model(Panel(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope, mask,
                       decoding).config(), progress)
    return describe_loaded()


def summary_line(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope, mask, decoding,
                 transform="none", knob=0) -> str:
    """The closed panel's one line: what every run will use."""
    quantized = "" if quant == "none" else f" {quant}"
    transformed = "" if (transform or "none").strip() == "none" else f", context {transform}"
    knobbed = f", knob {knob:g}" if isinstance(knob, (int, float)) and knob else ""
    return (f"Model and run configuration: {model}{quantized}, RoPE {rope}, mask {mask}, {decoding}, "
            f"{max_new_tokens} new tokens{'' if chat_template else ', no chat template'}{transformed}{knobbed} "
            "(open to change)")


def relabelled(*values) -> gr.Accordion:
    return gr.Accordion(label=summary_line(*values))


def build() -> ConfigInputs:
    """Render the panel (an accordion above the tabs, closed to one line) and wire its Load button."""
    auto_note = ("this CPU has fast bfloat16 (AMX/AVX512-BF16), so auto picks **bf16**, 3-5x faster than fp32"
                 if cpu_supports_bf16() else "auto picks fp32 on this CPU (no fast bfloat16)")
    choices = allowed_models() if public_mode() else list(EMBEDDED_MODELS)
    with gr.Accordion(summary_line(choices[0], "none", "nf4", "auto", True, 32, "default", "causal",
                                   "greedy"), open=False, elem_id="model-panel") as accordion:
        with gr.Row():
            model = gr.Dropdown(choices, value=choices[0], allow_custom_value=True, label="Model", scale=3,
                                info="The models this Space serves (its operator chooses them)" if public_mode()
                                else "An embedded model (gemma3-270m: Gemma 3 270M base, 32K window, under the "
                                "Gemma Terms of Use), a Hub id (owner/name) or a local directory")
            quant = gr.Radio(list(QUANTS), value="none", label="Quantization (bitsandbytes)")
            quant_4bit_type = gr.Radio(list(QUANT_4BIT_TYPES), value="nf4", label="4-bit type")
            dtype = gr.Radio(list(DTYPES), value="auto", label="dtype", info=auto_note)
        with gr.Row():
            chat_template = gr.Checkbox(True, label="Apply the chat template")
            max_new_tokens = gr.Number(32, precision=0, label="Max new tokens", info=f"1 to {limits().new_tokens}")
            rope = gr.Textbox("default", label="RoPE", info="KIND[:factor[,key=value]], e.g. yarn:2; kinds: "
                              + ", ".join(entries("rope")) + "; on Gemma 3 add layer_type=global or layer_type=local to "
                              "scale only those layers (Context tab)")
            mask = gr.Textbox("causal", label="Attention mask", info="KIND[:key=value,...], e.g. sinks:window=1024; "
                              "kinds: " + ", ".join(entries("mask")))
            decoding = gr.Textbox("greedy", label="Decoding", info="METHOD[:key=value,...], e.g. beam:num_beams=4; "
                                  "methods: " + ", ".join(entries("decoding")) + " (Decoding tab)")
            transform = gr.Textbox("none", label="Context transform", info="KIND[:key=value,...] applied to the "
                                   "context before the prompt is formatted: " + ", ".join(entries("transform"))
                                   + " (jrt: the context read twice; sandwich: the question before and after it)")
            knob = gr.Number(0, label="Context knob", info=f"-{KNOB_LIMIT} to {KNOB_LIMIT}: the model's context "
                             "direction added at its layer (+ follows the context more, - less; 0 off; found once per "
                             "model, about 40 s on a CPU; Decoding tab)")
            load_button = gr.Button("Load", variant="secondary", visible=not public_mode())
        status = gr.Markdown(describe_loaded())
    inputs = ConfigInputs(model, quant, quant_4bit_type, dtype, chat_template, max_new_tokens, rope, mask, decoding, status,
                          transform, knob)
    load_button.click(load, inputs.all(), status, api_name="load_model", concurrency_id="model")
    for component in inputs.all():
        component.change(relabelled, inputs.all(), accordion, api_name=False, show_progress="hidden")
    return inputs
