"""Decoding tab: one prompt (free text or a haystack probe) under several decoding methods side by side,
per-token probabilities, context-aware decoding's two distributions, beams and ICN answers, and the
knowledge-conflict set."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import gradio as gr

from engines.config.errors import LabError
from engines.config.kinds import entries
from engines.config.policy import limits
from engines.config.specs import KNOB_LIMIT, DecodingSpec, RunConfig, SpecError
from engines.decoding.generation import GenerationResult, format_prompt
from engines.model.jobs import model_job
from engines.model.loading import MANAGER
from engines.probes.runner import ProbeOutcome, check_prompt_length, max_prompt_tokens, run_each
from engines.probes.tasks import ProbeSpec, build_probe, load_tasks
from engines.studies.conflicts import conflict_summary, knob_curve, load_conflicts, run_conflicts
from engines.studies.knob import find_knob
from services.run_log import log_generation, log_probe, session_for, write_run
from storage.db import StorageError, Store
from ui import figures
from ui.model_panel import ConfigInputs, Panel, describe_loaded, loaded_model, said_to_user
from ui.text import Refusal, warn

FREE_TEXT = "(free text: the context and question above)"
DEFAULT_METHODS = "greedy\nbeam:num_beams=4\ncontrastive\ndola\ncad:alpha=1\nadacad"
MAX_METHODS = 8
RESULT_HEADERS = ["method", "answer", "correct", "new tokens", "seconds", "finish", "run id"]
CAD_HEADERS = ["method", "step", "chosen", "with context (top 3)", "without context (top 3)", "combined (top 3)"]
ALTERNATIVE_HEADERS = ["method", "kind", "text", "score (log p / length)", "search score"]
SUMMARY_HEADERS = ["method", "items", "follows_context", "follows_memory", "neither"]
ANSWER_HEADERS = ["method", "item", "answer", "verdict", "seconds"]
MAX_KNOBS = 7


def as_rows(records: list[dict], headers: list[str]) -> list[list]:
    return [[record[h] for h in headers] for record in records]


def parse_methods(text: str) -> list[DecodingSpec]:
    """One decoding setting per line; a bad line becomes a gr.Error naming it."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise Refusal("Enter at least one decoding method, one per line, e.g. greedy or beam:num_beams=4.")
    if len(lines) > MAX_METHODS:
        raise Refusal(f"At most {MAX_METHODS} methods at once; remove {len(lines) - MAX_METHODS} line(s).")
    specs = []
    for number, line in enumerate(lines, 1):
        try:
            specs.append(DecodingSpec.parse(line))
            limits().check_decoding(specs[-1])
        except SpecError as exc:
            raise Refusal(f"Method line {number} ({line}): {exc}") from exc
    return specs


def _top3(pairs) -> str:
    return ", ".join(f"{text!r} {prob:.2f}" for text, prob in list(pairs)[:3])


def cad_rows(method: str, tokens: list[dict]) -> list[list]:
    return [[method, t["index"], repr(t["text"]), _top3(t["extra"]["with_context"]),
             _top3(t["extra"]["without_context"]), _top3(t["top"])] for t in tokens if "with_context" in t["extra"]]


def alternative_rows(method: str, details: dict) -> list[list]:
    rows = [[method, f"beam {i}", beam["text"], beam["score"], beam.get("search_score")]
            for i, beam in enumerate(details.get("beams", []), 1)]
    if "diversity" in details:
        figures_ = details["diversity"]
        rows.append([method, "diversity", f"distinct-2 {figures_['distinct_2']}, pairwise overlap "
                                          f"{figures_['pairwise_overlap']}", None, None])
    for key, kind in (("answers", "ICN answer"), ("topk_answers", "top-k expansion")):
        rows += [[method, f"{kind} {i}", answer, None, None] for i, answer in enumerate(details.get(key, []), 1)]
    if "answers" in details:
        rows.append([method, "distinct share", f"ICN {details['distinct_share']}, top-k "
                                               f"{details['topk_distinct_share']}", None, None])
    return rows


@dataclass
class DecodingTab:
    results: gr.Dataframe
    token_plot: gr.Plot
    alpha_plot: gr.Plot
    alternatives: gr.Dataframe
    cad_table: gr.Dataframe
    prompt_box: gr.Textbox
    conflict_plot: gr.Plot
    conflict_table: gr.Dataframe
    conflict_rows: gr.Dataframe
    session: gr.State
    status: gr.Markdown
    store: Store | None


def prompts_for(loaded, run_config, task, context, question, length, depth, seed):
    """(probe instance or None, the prompt, the prompt without its context for free text)."""
    if task == FREE_TEXT:
        if not (question or "").strip():
            raise Refusal("Enter a question, or choose a haystack probe.")
        template = run_config.chat_template
        prompt = format_prompt(loaded.tokenizer, context or "", question.strip(), template,
                               transform=run_config.transform)
        with said_to_user():
            check_prompt_length(loaded, prompt)
        return None, prompt, format_prompt(loaded.tokenizer, "", question.strip(), template)
    with said_to_user():
        spec = ProbeSpec(task=task, length=int(length or 0), depth=float(depth or 0), seed=int(seed or 0))
        instance = build_probe(loaded.tokenizer, spec, run_config.chat_template, None, max_prompt_tokens(loaded),
                               run_config.transform)
    return instance, instance.prompt, None


def log_run(log_to, session_id, run_config, loaded, item, context, question):
    try:
        if isinstance(item, ProbeOutcome):
            return log_probe(log_to, session_id, run_config, loaded, item)
        return log_generation(log_to, session_id, "probe", run_config, loaded,
                              {"context": context, "question": question}, item)
    except StorageError as exc:
        warn(str(exc))
        return None


def alpha_figure(tokens: dict[str, list[dict]]):
    shown = {label: t for label, t in tokens.items() if t and "alpha" in t[0]["extra"]}
    return figures.cad_alpha(shown) if shown else None


def compare(tab: DecodingTab, context, question, task, length, depth, seed, methods, state, *values,
            progress=gr.Progress()):
    """Each method on the same prompt in turn, streamed side by side, each run logged."""
    base = Panel.of(values).config()
    specs = parse_methods(methods)
    loaded = loaded_model(base, progress)
    instance, prompt, plain = prompts_for(loaded, base, task, context, question, length, depth, seed)
    configs = [dataclasses.replace(base, decoding=spec, max_new_tokens=instance.max_new_tokens if instance
                                   else base.max_new_tokens) for spec in specs]

    rows = [[spec.label, "", None, 0, None, "waiting", None] for spec in specs]
    tokens: dict[str, list[dict]] = {spec.label: [] for spec in specs}
    cad, extra_rows = [], []
    log_to, session_id, state = session_for(tab.store, state)
    yield {tab.prompt_box: prompt, tab.results: rows, tab.session: state}
    with said_to_user():
        for number, item in MANAGER.stream(base.model, model_job(run_each, configs, instance, prompt, plain)):
            label, row = specs[number].label, rows[number]
            if isinstance(item, (GenerationResult, ProbeOutcome)):
                result = item.generation if isinstance(item, ProbeOutcome) else item
                run_id = log_run(log_to, session_id, configs[number], loaded, item, context, question)
                rows[number] = [label, result.text, item.score.correct if instance else None, result.new_tokens,
                                result.seconds, result.finish, run_id]
                cad += cad_rows(label, tokens[label])
                extra_rows += alternative_rows(label, result.details)
                yield {tab.results: rows, tab.token_plot: figures.decoding_tokens(tokens), tab.cad_table: cad,
                       tab.alternatives: extra_rows, tab.alpha_plot: alpha_figure(tokens)}
                continue
            tokens[label].append(item.to_dict())
            row[1], row[3], row[5] = row[1] + item.text, len(tokens[label]), "generating"
            if len(tokens[label]) % 4 == 1:
                yield {tab.results: rows, tab.token_plot: figures.decoding_tokens(tokens)}
    yield {tab.results: rows, tab.token_plot: figures.decoding_tokens(tokens), tab.cad_table: cad,
           tab.alternatives: extra_rows, tab.alpha_plot: alpha_figure(tokens), tab.prompt_box: prompt,
           tab.status: describe_loaded()}


def conflicts(tab: DecodingTab, methods, count, state, *values, progress=gr.Progress()):
    """The listed methods over the knowledge-conflict set, with the share that follows the context."""
    base = Panel.of(values).config()
    specs = parse_methods(methods)
    loaded_model(base, progress)
    total, rows = len(specs) * int(count), []
    log_to, session_id, state = session_for(tab.store, state)
    events = MANAGER.stream(base.model, model_job(run_conflicts, base, specs, limit=int(count)))
    with said_to_user():
        for row in events:
            rows.append(row)
            progress(len(rows) / total, desc=f"{len(rows)}/{total}: {row['method']}")
            summary = conflict_summary(rows)
            yield {tab.conflict_plot: figures.conflict_bars(summary),
                   tab.conflict_table: as_rows(summary, SUMMARY_HEADERS),
                   tab.conflict_rows: as_rows(rows, ANSWER_HEADERS), tab.session: state}
    summary = conflict_summary(rows)
    try:
        write_run(log_to, session_id, "conflicts", base, MANAGER.loaded, {"methods": [s.to_dict() for s in specs],
                  "items": int(count)}, {"conflict_summary": summary, "rows": rows}, None)
    except LabError as exc:
        warn(str(exc))


def parse_knobs(text: str) -> list[float]:
    """Knob values separated by commas or spaces; a bad one becomes a gr.Error naming it."""
    words = (text or "").replace(",", " ").split()
    if not 1 <= len(words) <= MAX_KNOBS:
        raise Refusal(f"Enter 1 to {MAX_KNOBS} knob values separated by commas, e.g. -2, 0, 2.")
    try:
        return [RunConfig(knob=float(word)).knob for word in words]
    except ValueError:
        raise Refusal(f"Knob values must be numbers from -{KNOB_LIMIT} to {KNOB_LIMIT}, e.g. -2, 0, 2.") from None
    except SpecError as exc:
        raise Refusal(str(exc)) from None


def knob_run(tab: DecodingTab, methods, knobs, count, state, *values, progress=gr.Progress()):
    """The first listed method over the conflict set at each knob value: the share that follows the context
    against the knob."""
    base = dataclasses.replace(Panel.of(values).config(), decoding=parse_methods(methods)[0])
    values_wanted = parse_knobs(knobs)
    loaded_model(base, progress)
    total, rows, knob = len(values_wanted) * int(count), [], None
    log_to, session_id, state = session_for(tab.store, state)
    progress(0, desc="Finding the model's context direction (once per model)")
    events = MANAGER.stream(base.model, model_job(knob_curve, base, values_wanted, limit=int(count)))
    with said_to_user():
        for row in events:
            rows.append(row)
            progress(len(rows) / total, desc=f"{len(rows)}/{total}: knob {row['knob']:g}")
            summary = conflict_summary(rows, by="knob")
            knob = knob or find_knob(MANAGER.loaded)  # found during the first row's run; read once
            yield {tab.conflict_plot: figures.knob_curve(summary, knob.layer),
                   tab.conflict_table: as_rows(summary, ["knob", *SUMMARY_HEADERS[1:]]),
                   tab.conflict_rows: as_rows(rows, ["knob", *ANSWER_HEADERS[1:]]), tab.session: state}
    try:
        write_run(log_to, session_id, "knob_curve", base, MANAGER.loaded, {"knobs": values_wanted, "items": int(count)},
                  {"knob_context_share": conflict_summary(rows, by="knob"), "rows": rows,
                   "knob": find_knob(MANAGER.loaded).record(None)}, None)
    except LabError as exc:
        warn(str(exc))


def build(config: ConfigInputs, store: Store | None, session: gr.State) -> None:
    task_names = [FREE_TEXT, *load_tasks()]
    with gr.Tab("Decoding", id="decoding"):
        gr.Markdown("The same prompt under several decoding methods, side by side (one per line, "
                    "`METHOD[:key=value,...]`). Methods: "
                    + "; ".join(f"**{name}** ({method.description})" for name, method in entries("decoding").items())
                    + ". Context-aware decoding "
                    "runs the prompt twice (with and without the context), so it costs two passes per token.")
        with gr.Row():
            with gr.Column(scale=3):
                context = gr.Textbox(load_conflicts()[0]["context"], lines=5, label="Context", elem_id="decode-context")
                question = gr.Textbox(load_conflicts()[0]["question"], label="Question")
                with gr.Row():
                    task = gr.Dropdown(task_names, value=FREE_TEXT, label="Or a haystack probe")
                    length = gr.Number(1000, precision=0, label="Length (tokens)")
                    depth = gr.Number(50, label="Depth (%)")
                    seed = gr.Number(1, precision=0, label="Seed")
            with gr.Column(scale=2):
                methods = gr.Textbox(DEFAULT_METHODS, lines=7, label="Methods, one per line", elem_id="decode-methods")
                with gr.Row():
                    run = gr.Button("Compare methods", variant="primary", elem_id="decode-run")
                    stop = gr.Button("Cancel", variant="stop")
        results = gr.Dataframe(headers=RESULT_HEADERS, label="Answers", wrap=True, elem_id="decode-results")
        token_plot = gr.Plot(label="Per-token probability and entropy")
        with gr.Row():
            alpha_plot = gr.Plot(label="Context-aware decoding: alpha per step")
            alternatives = gr.Dataframe(headers=ALTERNATIVE_HEADERS, label="Beams, ICN answers, diversity", wrap=True)
        cad_table = gr.Dataframe(headers=CAD_HEADERS, label="Context-aware decoding: top tokens per step", wrap=True)
        with gr.Accordion("Prompt: the exact text fed to the model", open=False):
            prompt_box = gr.Textbox(lines=8, max_lines=30, interactive=False, show_label=False)
        with gr.Accordion("Knowledge-conflict set: how often each method follows the context", open=False):
            gr.Markdown(f"{len(load_conflicts())} short contexts written for this lab contradict familiar facts. "
                        "A method *follows the context* when its answer names the context's answer and not the "
                        "familiar one. Runs the methods listed above.")
            with gr.Row():
                limit = gr.Slider(1, len(load_conflicts()), value=len(load_conflicts()), step=1, label="Items")
                conflict_run = gr.Button("Run the set", elem_id="conflict-run")
                conflict_stop = gr.Button("Cancel", variant="stop")
            gr.Markdown("**The context knob**: the first method above at each knob value. The knob adds that many "
                        "times a direction of the model's residual stream at one layer, found once per model from "
                        "other conflicts (those it answers from the context against those it answers from memory); "
                        "+ should follow the context more, - less.")
            with gr.Row():
                knobs = gr.Textbox("-2, 0, 2", label="Knob values", elem_id="knob-values")
                knob_button = gr.Button("Knob curve", elem_id="knob-run")
            conflict_plot = gr.Plot(label="Whom the answer follows")
            conflict_table = gr.Dataframe(headers=SUMMARY_HEADERS, label="Per method", wrap=True)
            conflict_rows = gr.Dataframe(headers=ANSWER_HEADERS, label="Every answer", wrap=True)

    tab = DecodingTab(results, token_plot, alpha_plot, alternatives, cad_table, prompt_box, conflict_plot,
                      conflict_table, conflict_rows, session, config.status, store)
    inputs = [context, question, task, length, depth, seed, methods, session, *config.all()]
    event = run.click(partial(compare, tab), inputs, [results, token_plot, alpha_plot, alternatives, cad_table,
                                                       prompt_box, session, config.status],
                      api_name="decode_compare", concurrency_id="model")
    stop.click(None, cancels=[event], api_name=False)
    conflict_event = conflict_run.click(partial(conflicts, tab), [methods, limit, session, *config.all()],
                                        [conflict_plot, conflict_table, conflict_rows, session],
                                        api_name="decode_conflicts", concurrency_id="model")
    knob_event = knob_button.click(partial(knob_run, tab), [methods, knobs, limit, session, *config.all()],
                                   [conflict_plot, conflict_table, conflict_rows, session],
                                   api_name="decode_knob_curve", concurrency_id="model")
    conflict_stop.click(None, cancels=[conflict_event, knob_event], api_name=False)
