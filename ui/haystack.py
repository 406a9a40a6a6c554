"""Haystack tab: choose a task preset or compose a probe, preview where the needles sit, run and score it."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial

import gradio as gr

from engines.attention.function import AttentionCapture
from engines.attention.views import capture_views, layer_labels, question_positions, top_heads
from engines.config.kinds import entries
from engines.model.jobs import model_job
from engines.model.loading import MANAGER
from engines.probes.haystack import HaystackError, read_upload
from engines.probes.runner import SCORE_MODES, masking_effect, max_prompt_tokens, run_probe
from engines.probes.tasks import ProbeSpec, build_probe, get_task, load_tasks
from services.run_flow import run_logged
from services.run_log import log_probe, remember_upload, session_for, write_run
from storage.db import StorageError, Store
from storage.transfer import nesting_depth
from ui import attention_panel
from ui.figures import needle_strip
from ui.model_panel import ConfigInputs, Panel, describe_loaded, loaded_model, said_to_user
from ui.progress import Clock, seconds_for
from ui.prompt_view import highlighted
from ui.run_view import RunView, readable, shown_views, streamed
from ui.text import Refusal, key_values, verdict_badge, warn

PRESET_HAYSTACK = "preset"
SETTINGS_MAX_CHARS = 10_000


PROMPT_PREVIEW_CHARS = 20000


def task_help(name: str) -> tuple[str, str]:
    task = get_task(name)
    return (f"**{task.name}**: {task.description} Haystack: `{task.haystack}`, scorer: `{task.scorer}`, "
            f"new-token budget {task.max_new_tokens}. *{task.differs}*", json.dumps(task.params, indent=1))


def builder_settings(text: str | None) -> dict:
    """The builder settings box as a dict; checked on its size and nesting before it is parsed."""
    text = text or "{}"
    if len(text) > SETTINGS_MAX_CHARS or nesting_depth(text) > 4:
        raise Refusal(f"Builder settings are a small JSON object (at most {SETTINGS_MAX_CHARS:,} characters, "
                      'nested at most 4 deep) such as {"num_hops": 3}.')
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refusal(f"Builder settings are not valid JSON ({exc.msg} at character {exc.pos}); "
                      'write an object such as {"num_hops": 3}.') from exc
    if not isinstance(params, dict):
        raise Refusal('Builder settings must be a JSON object such as {"num_hops": 3}.')
    return params


def probe_spec(task, length, depth, seed, haystack, params_json) -> ProbeSpec:
    params = builder_settings(params_json)
    if length is None or int(length) != length or depth is None or seed is None or int(seed) != seed:
        raise Refusal("Length and seed must be whole numbers and depth a number from 0 to 100.")
    try:
        get_task(task)
        return ProbeSpec(task=task, length=int(length), depth=float(depth), seed=int(seed),
                         haystack=None if haystack == PRESET_HAYSTACK else haystack, params=params)
    except HaystackError as exc:
        raise Refusal(str(exc)) from exc


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


@dataclass
class HaystackTab:
    run: RunView
    strip: gr.Plot
    summary: gr.JSON  # summary and score: the records for API clients; the page shows `verdict` and `table`
    score: gr.JSON
    verdict: gr.HTML
    table: gr.Dataframe
    prompt_box: gr.Textbox
    status: gr.Markdown
    session: gr.State
    store: Store | None


def make(tab: HaystackTab, task, length, depth, seed, haystack, params, upload, values, progress):
    """The run configuration (with the task's new-token budget), the loaded model and the built probe."""
    run_config = Panel.of(values).config()
    spec = probe_spec(task, length, depth, seed, haystack, params)
    loaded = loaded_model(run_config, progress)
    try:
        upload_text = read_upload(upload) if upload else None
        spec = remember_upload(tab.store, spec, upload_text)
        instance = build_probe(loaded.tokenizer, spec, run_config.chat_template, upload_text, max_prompt_tokens(loaded),
                               run_config.transform)
    except HaystackError as exc:
        raise Refusal(str(exc)) from exc
    return dataclasses.replace(run_config, max_new_tokens=instance.max_new_tokens), loaded, instance


def built(tab: HaystackTab, instance) -> dict:
    return {tab.strip: needle_strip(list(instance.spans), instance.prompt_tokens), tab.summary: summary_of(instance),
            tab.prompt_box: preview(instance), tab.table: key_values(summary_of(instance)),
            tab.run.prompt_view: highlighted(instance.prompt, list(instance.spans))}


def build_only(tab: HaystackTab, task, length, depth, seed, haystack, params, upload, *values,
               progress=gr.Progress()):
    """Build the probe and show where its needles sit, without running the model."""
    *_, instance = make(tab, task, length, depth, seed, haystack, params, upload, values, progress)
    return built(tab, instance)


def run(tab: HaystackTab, task, length, depth, seed, haystack, params, upload, mode, capture_wanted, state, *values,
        progress=gr.Progress()):
    """Build the probe, stream its answer, score and log it."""
    run_config, loaded, instance = make(tab, task, length, depth, seed, haystack, params, upload, values, progress)
    shown = built(tab, instance)
    yield shown | {tab.run.answer: "", tab.score: None, tab.verdict: ""}
    spans = list(instance.spans)
    capture = AttentionCapture(question_positions(loaded.tokenizer, instance.prompt, instance.question)) \
        if capture_wanted else None
    log_to, session_id, state = session_for(tab.store, state)
    flow = run_logged(
        run_config.model, model_job(run_probe, instance, mode, run_config, capture=capture),
        (lambda: capture_views(capture, instance, layer_labels(loaded.model.config))) if capture else None,
        lambda outcome, extra: log_probe(log_to, session_id, run_config, loaded, outcome, extra=extra))
    with said_to_user():
        finished = yield from streamed(tab.run, flow, capture, spans)
    outcome, result = finished.result, finished.result.summary()
    generated = [event.token_id for event in outcome.generation.tokens] if outcome.generation else []
    tokens = [event.to_dict() for event in outcome.generation.tokens] if outcome.generation else []
    shown |= readable(tab.run, instance.prompt, spans, tokens) | shown_views(
        tab.run, finished, capture, loaded, instance.prompt, spans, run_config, instance.prompt_tokens, generated,
        instance.expected[0])
    score = ({k: result[k] for k in ("correct", "score", "expected", "scorer", "score_details")}
             | {"seconds": result.get("seconds"), "run_id": finished.run_id}
             | ({"not_saved": finished.warning} if finished.warning else {}))
    yield shown | {tab.run.answer: outcome.answer, tab.session: state, tab.status: describe_loaded(), tab.score: score,
                   tab.verdict: verdict_badge(result["correct"], list(instance.expected), outcome.answer,
                                              result["score"]),
                   tab.table: key_values(summary_of(instance) | score)}


def mask_heads(tab: HaystackTab, task, length, depth, seed, haystack, params, upload, captured, count, heads_seed,
               state, *values, progress=gr.Progress()):
    """Rerun the probe with the top retrieval heads masked, and with as many random heads masked."""
    if not captured or not captured.get("retrieval"):
        raise Refusal("Run the probe with 'Capture attention' first (generate mode, with an answer copied "
                       "from the haystack): the retrieval scores choose the heads.")
    run_config, loaded, instance = make(tab, task, length, depth, seed, haystack, params, upload, values, progress)
    top = top_heads(captured["retrieval"], int(count or 1))
    clock = Clock(progress, 3, 2 * seconds_for(loaded, run_config, [instance.prompt_tokens] * 3,
                                               instance.max_new_tokens))  # a generation and a scoring pass each
    rows = []
    with said_to_user():
        for row in MANAGER.stream(run_config.model, model_job(masking_effect, instance, run_config, top,
                                                              int(heads_seed or 0)), seconds=clock.estimate):
            rows.append(row)
            clock.step(len(rows), "settings")
            yield masking_rows(rows), state
    log_to, session_id, state = session_for(tab.store, state)
    try:
        write_run(log_to, session_id, "head_masking", run_config, loaded,
                  {"probe": instance.spec.to_dict(), "k": len(top)}, {"rows": rows}, instance.prompt)
    except StorageError as exc:
        warn(str(exc))
    yield masking_rows(rows), state


def masking_rows(rows: list[dict]) -> list[list]:
    return [[r["setting"], r["answer"], r["correct"], r["gold_logprob"]] for r in rows]


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
                    haystack = gr.Dropdown([PRESET_HAYSTACK, *entries("source")], value=PRESET_HAYSTACK,
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
                verdict = gr.HTML(elem_id="haystack-verdict")
                answer = gr.Textbox(label="Answer", lines=3, interactive=False)
                table = gr.Dataframe(headers=["what", "value"], label="Prompt and score", interactive=False,
                                     wrap=True, elem_id="haystack-table")
                summary, score = gr.JSON(visible=False), gr.JSON(visible=False)
        probabilities = gr.Plot(label="Probability of each new token", visible=False)
        prompt_view = gr.HTML(elem_id="haystack-prompt-view")
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
                mask_stop = gr.Button("Cancel", variant="stop")
            mask_table = gr.Dataframe(headers=["setting", "answer", "correct", "gold log-probability"],
                                      label="Effect of masking", wrap=True)
        with gr.Accordion("Prompt text (long contexts shortened in the middle)", open=False):
            prompt_box = gr.Textbox(lines=12, max_lines=30, interactive=False, show_label=False)

    tab = HaystackTab(RunView(answer, profile_plot, position_plot, panel, probabilities, prompt_view, mass_plot,
                              segment_plot), strip, summary, score, verdict, table, prompt_box, config.status, session,
                      store)
    task.change(task_help, task, [help_text, params], api_name=False)
    common = [task, length, depth, seed, haystack, params, upload]
    build_button.click(partial(build_only, tab), [*common, *config.all()], [strip, summary, prompt_box, table,
                                                                             prompt_view],
                       api_name="haystack_build", concurrency_id="model")
    event = run_button.click(partial(run, tab), [*common, mode, capture_on, session, *config.all()],
                             [strip, summary, prompt_box, answer, score, session, config.status, *tab.run.plots(),
                              verdict, table],
                             api_name="haystack_run", concurrency_id="model")
    cancel.click(None, cancels=[event], api_name=False)
    masking = mask_button.click(partial(mask_heads, tab), [*common, panel.state, top_k, mask_seed, session,
                                                           *config.all()],
                                [mask_table, session], api_name="haystack_mask_heads", concurrency_id="model")
    mask_stop.click(None, cancels=[masking], api_name=False)
