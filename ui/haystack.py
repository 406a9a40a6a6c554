"""Haystack tab: choose a task preset or compose a probe, preview where the needles sit, run and score it."""
from __future__ import annotations

import dataclasses
import json

import gradio as gr

from engines.attention.function import AttentionCapture
from engines.attention.views import capture_views, question_positions, top_heads
from engines.model.loading import MANAGER
from engines.probes.haystack import SOURCES, HaystackError, read_upload
from engines.probes.runner import SCORE_MODES, ProbeOutcome, masking_effect, max_prompt_tokens, run_probe
from engines.probes.tasks import ProbeSpec, build_probe, get_task, load_tasks
from services.run_log import log_probe, remember_upload, session_for, write_run
from storage.db import StorageError, Store
from ui import attention_panel, figures
from ui.figures import needle_strip
from ui.model_panel import ConfigInputs, config_from_values, describe_loaded, loaded_model, said_to_user

PRESET_HAYSTACK = "preset"


PROMPT_PREVIEW_CHARS = 20000


def task_help(name: str) -> tuple[str, str]:
    task = get_task(name)
    return (f"**{task.name}**: {task.description} Haystack: `{task.haystack}`, scorer: `{task.scorer}`, "
            f"new-token budget {task.max_new_tokens}.", json.dumps(task.params, indent=1))


def probe_spec(task, length, depth, seed, haystack, params_json) -> ProbeSpec:
    try:
        params = json.loads(params_json or "{}")
    except json.JSONDecodeError as exc:
        raise gr.Error(f"Builder settings are not valid JSON ({exc.msg} at character {exc.pos}); "
                       'write an object such as {"num_hops": 3}.') from exc
    if not isinstance(params, dict):
        raise gr.Error('Builder settings must be a JSON object such as {"num_hops": 3}.')
    if length is None or int(length) != length or depth is None or seed is None or int(seed) != seed:
        raise gr.Error("Length and seed must be whole numbers and depth a number from 0 to 100.")
    try:
        get_task(task)
        return ProbeSpec(task=task, length=int(length), depth=float(depth), seed=int(seed),
                         haystack=None if haystack == PRESET_HAYSTACK else haystack, params=params)
    except HaystackError as exc:
        raise gr.Error(str(exc)) from exc


def preview(instance) -> str:
    text = instance.prompt
    if len(text) > PROMPT_PREVIEW_CHARS:
        half = PROMPT_PREVIEW_CHARS // 2
        text = f"{text[:half]}\n\n[... {len(text) - 2 * half:,} characters not shown ...]\n\n{text[-half:]}"
    return text


def summary_of(instance) -> dict:
    return {"prompt_tokens": instance.prompt_tokens, "prompt_chars": instance.prompt_chars,
            "target_tokens": instance.spec.length, "depth": instance.spec.depth, "haystack": instance.haystack,
            "expected": list(instance.expected), "question": instance.question,
            "needle_token_spans": instance.needle_token_spans}


def build(config: ConfigInputs, store: Store | None, session: gr.State) -> None:
    names = list(load_tasks())
    with gr.Tab("Haystack", id="haystack"):
        with gr.Row():
            with gr.Column(scale=2):
                task = gr.Dropdown(names, value="passkey", label="Task preset")
                help_text = gr.Markdown(task_help("passkey")[0])
                with gr.Row():
                    length = gr.Number(1000, precision=0, label="Target length (prompt tokens)")
                    depth = gr.Slider(0, 100, value=50, step=1, label="Needle depth (%)")
                    seed = gr.Number(1, precision=0, label="Seed")
                with gr.Row():
                    haystack = gr.Dropdown([PRESET_HAYSTACK, *SOURCES, "upload"], value=PRESET_HAYSTACK,
                                           label="Haystack source")
                    mode = gr.Radio(list(SCORE_MODES), value="generate", label="Scoring",
                                    info="logprob: probability of the gold answer from one forward pass")
                upload = gr.File(label="Your haystack (.txt or .md, up to 5 MB)", file_types=[".txt", ".md"],
                                 type="filepath")
                capture_on = gr.Checkbox(False, label="Capture attention (question and answer rows, every layer "
                                                      "and head)", elem_id="haystack-capture")
                params = gr.Code(task_help("passkey")[1], language="json", lines=4,
                                 label="Builder settings (JSON; for 'custom': needle, question, answer)")
                with gr.Row():
                    build_button = gr.Button("Build", elem_id="haystack-build")
                    run_button = gr.Button("Run probe", variant="primary", elem_id="haystack-run")
                    cancel = gr.Button("Cancel", variant="stop")
            with gr.Column(scale=3):
                strip = gr.Plot(label="Needle positions")
                summary = gr.JSON(label="Prompt")
                answer = gr.Textbox(label="Answer", lines=3, interactive=False)
                score = gr.JSON(label="Score")
        with gr.Row():
            profile_plot = gr.Plot(label="Attention over the context", visible=False)
            mass_plot = gr.Plot(label="Layer x head mass on the needle", visible=False)
        with gr.Row():
            position_plot = gr.Plot(label="Layer x position", visible=False)
            segment_plot = gr.Plot(label="Mass per segment", visible=False)
        panel = attention_panel.build(profile_plot, position_plot, "haystack")
        with gr.Accordion("Head masking: does the answer need the retrieval heads?", open=False):
            gr.Markdown("Reruns this probe with the top K retrieval heads given uniform attention, and with K random "
                        "other heads, and shows each answer and the gold answer's log-probability. Needs a run "
                        "with 'Capture attention' whose answer was copied from the haystack.")
            with gr.Row():
                top_k = gr.Number(10, precision=0, minimum=1, maximum=100, label="K heads")
                mask_seed = gr.Number(0, precision=0, label="Seed for the random heads")
                mask_button = gr.Button("Rerun with heads masked", elem_id="haystack-mask-run")
            mask_table = gr.Dataframe(headers=["setting", "answer", "correct", "gold log-probability"],
                                      label="Effect of masking", wrap=True)
        with gr.Accordion("Prompt text (long contexts shortened in the middle)", open=False):
            prompt_box = gr.Textbox(lines=12, max_lines=30, interactive=False, show_label=False)

    def make(task_name, length_value, depth_value, seed_value, haystack_name, params_json, upload_path,
             *values, progress):
        run_config = config_from_values(*values)
        spec = probe_spec(task_name, length_value, depth_value, seed_value, haystack_name, params_json)
        loaded = loaded_model(run_config, progress)
        try:
            upload_text = read_upload(upload_path) if upload_path else None
            spec = remember_upload(store, spec, upload_text)
            instance = build_probe(loaded.tokenizer, spec, run_config.chat_template, upload_text,
                                   max_prompt_tokens(loaded))
        except HaystackError as exc:
            raise gr.Error(str(exc)) from exc
        return dataclasses.replace(run_config, max_new_tokens=instance.max_new_tokens), loaded, instance

    def build_only(task_name, length_value, depth_value, seed_value, haystack_name, params_json, upload_path,
                   *values, progress=gr.Progress()):
        *_, instance = make(task_name, length_value, depth_value, seed_value, haystack_name, params_json,
                            upload_path, *values, progress=progress)
        return {strip: needle_strip(list(instance.spans), instance.prompt_tokens), summary: summary_of(instance),
                prompt_box: preview(instance)}

    def run(task_name, length_value, depth_value, seed_value, haystack_name, params_json, upload_path, mode_name,
            capture_wanted, state, *values, progress=gr.Progress()):
        run_config, loaded, instance = make(
            task_name, length_value, depth_value, seed_value, haystack_name, params_json, upload_path,
            *values, progress=progress)
        shown = {strip: needle_strip(list(instance.spans), instance.prompt_tokens), summary: summary_of(instance),
                 prompt_box: preview(instance)}
        yield shown | {answer: "", score: None}
        text = ""
        capture = AttentionCapture(question_positions(loaded.tokenizer, instance.prompt_tokens, instance.question)) \
            if capture_wanted else None
        with said_to_user():
            for item in MANAGER.stream(run_config.model, lambda model_, should_stop: run_probe(
                    model_, instance, mode_name, run_config, should_stop, capture=capture)):
                if isinstance(item, ProbeOutcome):
                    break
                text += item.text
                yield {answer: text} | attention_panel.live_profile(capture, item.index, list(instance.spans),
                                                                   profile_plot)
        views = capture_views(capture, instance) if capture is not None else None
        log_to, session_id, state = session_for(store, state)
        try:
            run_id = log_probe(log_to, session_id, run_config, loaded, item,
                               extra={"attention": views} if views else None)
        except StorageError as exc:
            gr.Warning(str(exc))
            run_id = None
        result = item.summary()
        if views:
            shown |= {profile_plot: gr.Plot(figures.attention_profile(views["profile"], list(instance.spans)),
                                            visible=True),
                      mass_plot: gr.Plot(figures.layer_head_map(views["needle_mass"]), visible=True),
                      position_plot: gr.Plot(figures.layer_position_map(views["layer_position"], instance.prompt_tokens),
                                             visible=True),
                      segment_plot: gr.Plot(figures.segment_bars(views["segments"]), visible=True)}
            generated = [event.token_id for event in item.generation.tokens] if item.generation else []
            shown |= attention_panel.shown_after_run(panel, attention_panel.captured_state(
                capture, loaded, instance.prompt, list(instance.spans), run_config, generated, instance.expected[0]))
        yield shown | {answer: item.answer, session: state, config.status: describe_loaded(),
               score: {k: result[k] for k in ("correct", "score", "expected", "scorer", "score_details")}
               | {"seconds": result.get("seconds"), "run_id": run_id}}

    task.change(task_help, task, [help_text, params], api_name=False)
    common = [task, length, depth, seed, haystack, params, upload]
    build_button.click(build_only, [*common, *config.all()], [strip, summary, prompt_box],
                       api_name="haystack_build", concurrency_id="model")
    event = run_button.click(run, [*common, mode, capture_on, session, *config.all()],
                             [strip, summary, prompt_box, answer, score, session, config.status, profile_plot,
                              mass_plot, position_plot, segment_plot, panel.state, panel.layer, panel.head,
                              panel.retrieval_plot],
                             api_name="haystack_run", concurrency_id="model")
    cancel.click(None, cancels=[event], api_name=False)

    def mask_heads(task_name, length_value, depth_value, seed_value, haystack_name, params_json, upload_path,
                   captured, count, seed_value_heads, state, *values, progress=gr.Progress()):
        if not captured or not captured.get("retrieval"):
            raise gr.Error("Run the probe with 'Capture attention' first (generate mode, with an answer copied "
                           "from the haystack): the retrieval scores choose the heads.")
        run_config, loaded, instance = make(task_name, length_value, depth_value, seed_value, haystack_name,
                                            params_json, upload_path, *values, progress=progress)
        top = top_heads(captured["retrieval"], int(count or 1))
        k = len(top)
        with said_to_user(), MANAGER.lock:
            rows = masking_effect(loaded, instance, run_config, top, int(seed_value_heads or 0))
        log_to, session_id, state = session_for(store, state)
        try:
            write_run(log_to, session_id, "head_masking", run_config, loaded,
                      {"probe": instance.spec.to_dict(), "k": k}, {"rows": rows}, instance.prompt)
        except StorageError as exc:
            gr.Warning(str(exc))
        return [[r["setting"], r["answer"], r["correct"], r["gold_logprob"]] for r in rows], state

    mask_button.click(mask_heads, [*common, panel.state, top_k, mask_seed, session, *config.all()],
                      [mask_table, session], api_name="haystack_mask_heads", concurrency_id="model")
