"""Sweep tab: a task over lengths x depths x seeds, a heatmap that fills cell by cell, position and
length curves, effective context length, A/B comparison, resume, and each cell's details on click."""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import gradio as gr

from engines.attention.function import AttentionCapture
from engines.attention.views import capture_views, layer_labels, question_positions
from engines.config.errors import LabError
from engines.config.kinds import entries
from engines.config.policy import limits
from engines.config.specs import DTYPES, EMBEDDED_MODEL, EMBEDDED_MODELS, QUANTS, DecodingSpec, ModelSpec, RunConfig, SpecError
from engines.decoding.generation import encode
from engines.model.jobs import model_job
from engines.model.loading import MANAGER
from engines.probes.haystack import HaystackError, read_upload
from engines.probes.runner import SCORE_MODES, ProbeOutcome, run_probe
from engines.probes.tasks import load_tasks
from engines.studies.sweeps import DEPTH_SPACINGS, SweepSpec, check_cells, depth_grid
from services import visitors
from services.cluster import cluster_offered, shared_workers
from services.replay import stored_probe
from services.run_log import session_for
from services.sweep_jobs import SweepJob, estimate, open_job, parse_list, run_job
from storage.db import StorageError, Store
from ui import figures
from ui.haystack import PRESET_HAYSTACK, builder_settings
from ui.model_panel import ConfigInputs, Panel, describe_loaded, loaded_model, said_to_user
from ui.progress import Clock, seconds_for
from ui.prompt_view import token_texts
from ui.text import Refusal, key_values

IN_PROCESS, RAY = "this process", "Ray cluster"
TABLE_COLUMNS = ["length", "depth", "seed", "correct", "score", "answer", "prompt_tokens", "key"]


def sweep_spec(task, lengths, depth_count, spacing, seeds, mode, haystack, params_json,
               needle_attention=False) -> SweepSpec:
    params = builder_settings(params_json)
    try:
        if depth_count is None or int(depth_count) != depth_count:
            raise HaystackError("The number of depths must be a whole number, e.g. 11.")
        return SweepSpec(task, parse_list(lengths, int, "Lengths"), depth_grid(int(depth_count), spacing),
                         parse_list(seeds, int, "Seeds"), mode, None if haystack == PRESET_HAYSTACK else haystack,
                         params, bool(needle_attention))
    except HaystackError as exc:
        raise Refusal(str(exc)) from exc


def b_config(a: RunConfig, model, quant, dtype, chat_template, decoding) -> RunConfig:
    try:
        spec = ModelSpec(model=(model or "").strip(), quant=quant, quant_4bit_type=a.model.quant_4bit_type,
                         dtype=dtype, device=a.model.device)
        config = RunConfig(model=spec, chat_template=bool(chat_template), max_new_tokens=a.max_new_tokens,
                           rope=a.rope, mask=a.mask, transform=a.transform, knob=a.knob,
                           decoding=DecodingSpec.parse(decoding) if (decoding or "").strip() else a.decoding)
        limits().check_run(config)
        return config
    except SpecError as exc:
        raise Refusal(f"Configuration B: {exc}") from exc


def status_line(jobs: list[SweepJob], started: float, done_now: int, estimated: float | None) -> str:
    total = sum(job.total for job in jobs)
    finished = sum(len(job.rows) for job in jobs)
    elapsed = time.perf_counter() - started
    remaining = total - finished
    eta = f"{elapsed / done_now * remaining:.0f} s" if done_now else (
        f"about {estimated:.0f} s (estimate)" if estimated is not None else "-")
    ids = ", ".join(f"{'AB'[i]}: `{job.sweep_id}` ({job.status})" for i, job in enumerate(jobs))
    warnings = "".join(f" | **not saved:** {job.warning}" for job in jobs[:1] if job.warning)
    return f"**{finished}/{total} cells**, elapsed {elapsed:.0f} s, remaining {eta} | sweep ids {ids}{warnings}"


def heat_title(jobs: list[SweepJob], index: int) -> str:
    """'A: passkey', with each model named when A and B run different models (lengths are then in each
    model's own tokens)."""
    job = jobs[index]
    models = {j.config.model.model for j in jobs}
    return f"{'AB'[index]}: {job.spec.task}" + (f" on {job.config.model.model}" if len(models) > 1 else "")


def plots(jobs: list[SweepJob], value: str, threshold: float | None) -> dict:
    a = jobs[0]
    lengths, depths = a.spec.lengths, a.spec.depths
    out = {"heat_a": figures.sweep_heatmap(a.rows, lengths, depths, value, heat_title(jobs, 0)),
           "mass": gr.Plot(figures.sweep_heatmap(
               a.rows, lengths, depths, "needle_mass", "Attention mass on the needle (question rows)"),
               visible=True) if a.spec.needle_attention else gr.Plot(visible=False),
           "curve": figures.position_curve(a.rows, value), "length": figures.length_curve(a.rows, threshold, value)}
    compared = len(jobs) > 1
    out["heat_b"] = gr.Plot(figures.sweep_heatmap(jobs[1].rows, lengths, depths, value, heat_title(jobs, 1))
                            if compared else None, visible=compared)
    out["diff"] = gr.Plot(figures.difference_heatmap(a.rows, jobs[1].rows, lengths, depths, value)
                          if compared else None, visible=compared)
    return out


def table(jobs: list[SweepJob]) -> list[list]:
    return [[r[c] if c != "answer" else str(r[c])[:80] for c in TABLE_COLUMNS] + ["AB"[i]]
            for i, job in enumerate(jobs) for r in sorted(job.rows, key=lambda r: (r["length"], r["depth"], r["seed"]))]


class Grid(NamedTuple):
    """The tab's grid and A/B inputs by name, as a handler receives them."""

    task: str
    lengths: str
    depth_count: float
    spacing: str
    seeds: str
    mode: str
    haystack: str
    params: str
    needle_attention: bool
    upload: str | None
    compare: bool
    b_model: str
    b_quant: str
    b_dtype: str
    b_template: bool
    b_decoding: str


@dataclass
class SweepTab:
    status: gr.Markdown
    cells: gr.Dataframe
    figures: dict  # plot name in `plots` -> its component
    sweep_ids: gr.State
    session: gr.State
    model_status: gr.Markdown
    store: Store | None


def stream(tab: SweepTab, jobs: list[SweepJob], log_to: Store | None, limit, executor: str, progress: gr.Progress):
    """Run the jobs cell by cell (here, or on the Ray workers), redrawing the table and plots after each cell."""
    value = "correct" if jobs[0].spec.mode == "generate" else "score"
    limit = limit or None  # 0 or empty: the relative rule
    started, done_now = time.perf_counter(), 0
    total = sum(job.total for job in jobs)

    def shown() -> dict:
        return {tab.status: status_line(jobs, started, done_now, None), tab.cells: table(jobs),
                **{tab.figures[k]: fig for k, fig in plots(jobs, value, limit).items()}}

    try:
        workers = shared_workers() if executor == RAY else None
        for job in jobs:
            for _ in run_job(job, log_to, workers=workers):
                done_now += 1
                progress((sum(len(j.rows) for j in jobs), total), desc="cells")
                yield shown()
    except LabError as exc:
        raise Refusal(str(exc)) from exc
    yield shown() | {tab.sweep_ids: [job.sweep_id for job in jobs], tab.model_status: describe_loaded()}


def make_jobs(log_to: Store | None, grid: Grid, state, values) -> tuple[dict, Store | None, list[SweepJob]]:
    """Sweep A (and B when compared) opened in the run log; nothing is recorded when `log_to` is None."""
    spec = sweep_spec(grid.task, grid.lengths, grid.depth_count, grid.spacing, grid.seeds, grid.mode, grid.haystack,
                      grid.params, grid.needle_attention)
    a = Panel.of(values).config(max_new_tokens=load_tasks()[grid.task].max_new_tokens)  # the task's own budget
    configs = [a] + ([b_config(a, grid.b_model, grid.b_quant, grid.b_dtype, grid.b_template, grid.b_decoding)]
                     if grid.compare else [])
    try:
        check_cells(len(spec.lengths) * len(spec.depths) * len(spec.seeds) * len(configs),
                    "This grid, run for A and B," if len(configs) > 1 else None)
        upload_text = read_upload(grid.upload) if grid.upload else None
        log_to, session_id, state = session_for(log_to, state)
        return state, log_to, [open_job(log_to, session_id, c, spec, upload_text=upload_text,
                                        label=f"{grid.task} {'AB'[i]}") for i, c in enumerate(configs)]
    except LabError as exc:
        raise Refusal(str(exc)) from exc


def estimate_time(task, lengths, depth_count, spacing, seeds, mode, haystack, params, needle_attention, upload,
                  compare, b_model, b_quant, b_dtype, b_template, b_decoding, state, *values, progress=gr.Progress()):
    """The estimated time of the grid, from a short calibration on the loaded model."""
    grid = Grid(task, lengths, depth_count, spacing, seeds, mode, haystack, params, needle_attention, upload,
                compare, b_model, b_quant, b_dtype, b_template, b_decoding)
    *_, jobs = make_jobs(None, grid, state, values)
    try:
        figures_ = [estimate(job, lambda f, m: progress(f, desc=m)) for job in jobs]
    except LabError as exc:
        raise Refusal(str(exc)) from exc
    seconds = sum(f["seconds"] for f in figures_)
    plain = sum(f["seconds_without_sharing"] for f in figures_)
    return (f"**Estimate:** {sum(f['cells'] for f in figures_)} cells, about **{seconds:.0f} s** "
            f"({plain:.0f} s without prefix sharing), from a calibration run on this machine.")


def run(tab: SweepTab, task, lengths, depth_count, spacing, seeds, mode, haystack, params, needle_attention, upload,
        compare, b_model, b_quant, b_dtype, b_template, b_decoding, state, threshold, executor, *values,
        progress=gr.Progress()):
    """Open the sweep (A, and B when compared) in the run log and run it."""
    grid = Grid(task, lengths, depth_count, spacing, seeds, mode, haystack, params, needle_attention, upload,
                compare, b_model, b_quant, b_dtype, b_template, b_decoding)
    state, log_to, jobs = make_jobs(tab.store, grid, state, values)
    yield {tab.session: state, tab.status: status_line(jobs, time.perf_counter(), 0, None)}
    yield from stream(tab, jobs, log_to, threshold, executor, progress)


def resume(tab: SweepTab, sweep_id, threshold, executor, state, progress=gr.Progress()):
    """Continue one of this visitor's stopped sweeps from its saved cells."""
    try:
        if tab.store is None:
            raise StorageError("Sweeps cannot be resumed: this lab has no run log.")
        visitors.resumable_sweep(tab.store, state, (sweep_id or "").strip())
        job = open_job(tab.store, "", resume_id=(sweep_id or "").strip())
    except LabError as exc:
        raise Refusal(str(exc)) from exc
    yield from stream(tab, [job], tab.store, threshold, executor, progress)


def show_cell(store: Store | None, ids, row: dict):
    """A cell's stored record (as JSON for the attention button, and as a table) and its prompt."""
    job_id = ids[0 if row.get("config", "A") == "A" else 1] if ids else None
    stored = next((r for r in store.sweep_cells(job_id) if r["cell"] == row["key"]), None) if store and job_id else None
    if stored is None:
        return row, key_values(row), ""
    record = stored["outputs"]["row"] | {"run_id": stored["id"]}
    return record, key_values(record), store.get_run(stored["id"])["prompt"]


def picked_cell(store: Store | None, ids, rows, picked: str):
    """The heatmap cell clicked ("length:depth:click time" of sweep A): its first seed's details."""
    table_rows = rows.to_dict("records") if hasattr(rows, "to_dict") else []
    length, _, rest = (picked or "").partition(":")
    depth = rest.partition(":")[0]
    row = next((r for r in table_rows if r["config"] == "A" and str(r["length"]) == length
                and f"{float(r['depth']):g}" == depth), None)
    if row is None:
        raise Refusal("That cell has not run yet.")
    return show_cell(store, ids, row)


def cell_attention(store: Store | None, cell: dict | None, progress=gr.Progress()):
    """Rerun the chosen (logged) cell with attention capture and show its views."""
    run_record = store.get_run(cell["run_id"]) if store and cell and cell.get("run_id") else None
    if run_record is None:
        raise Refusal("Click a cell of a logged sweep in the table first (its run id appears in Cell).")
    run_config = RunConfig.from_dict(run_record["config"])
    loaded = loaded_model(run_config, progress)
    with said_to_user():
        instance = stored_probe(store, run_record, loaded, run_config)
        capture = AttentionCapture(question_positions(loaded.tokenizer, instance.prompt, instance.question))
        clock = Clock(progress, instance.max_new_tokens,
                      seconds_for(loaded, run_config, [instance.prompt_tokens], instance.max_new_tokens))
        job = model_job(run_probe, instance, run_record["inputs"]["mode"], run_config, capture=capture)
        for event in MANAGER.stream(run_config.model, job, seconds=clock.estimate):
            if isinstance(event, ProbeOutcome):
                outcome = event
            else:
                clock.step(event.index + 1, "new tokens at most")
    views = capture_views(capture, instance, layer_labels(loaded.model.config))
    title = f"{instance.spec.length} tokens, depth {instance.spec.depth:g}%, answer {outcome.answer!r}"
    tokens = token_texts(loaded.tokenizer, encode(loaded.tokenizer, instance.prompt)[0].tolist())
    return (gr.Plot(figures.attention_profile(views["profile"], list(instance.spans), title=f"Attention ({title})",
                                              tokens=tokens), visible=True),
            gr.Plot(figures.layer_head_map(views["needle_mass"], layers=views["layers"]), visible=True))


def b_controls() -> list:
    """Configuration B's inputs (compare, model, quantization, dtype, chat template, decoding)."""
    with gr.Accordion("A/B: run the same sweep under a second configuration", open=False), gr.Row():
        return [gr.Checkbox(False, label="Also run configuration B"),
                gr.Dropdown(list(EMBEDDED_MODELS), value=EMBEDDED_MODEL, allow_custom_value=True, label="B model",
                            info="another model runs the same grid in its own tokens"),
                gr.Radio(list(QUANTS), value="none", label="B quantization"),
                gr.Radio(list(DTYPES), value="fp32", label="B dtype"),
                gr.Checkbox(True, label="B applies the chat template"),
                gr.Textbox("", label="B decoding", info="empty: as A; e.g. cad:alpha=1 to compare methods")]


def build(config: ConfigInputs, store: Store | None, session: gr.State) -> None:
    with gr.Tab("Sweep", id="sweep"):
        with gr.Row():
            task = gr.Dropdown(list(load_tasks()), value="passkey", label="Task preset")
            lengths = gr.Textbox("1000,2000,4000,8000", label="Lengths (prompt tokens)")
            depth_count = gr.Number(11, precision=0, label="Depths (count, 0-100%)")
            spacing = gr.Radio(list(DEPTH_SPACINGS), value="linear", label="Depth spacing")
            seeds = gr.Textbox("1", label="Seeds")
        with gr.Row():
            mode = gr.Radio(list(SCORE_MODES), value="generate", label="Scoring")
            haystack = gr.Dropdown([PRESET_HAYSTACK, *entries("source")], value=PRESET_HAYSTACK, label="Haystack")
            upload = gr.File(label="Haystack file (.txt/.md)", file_types=[".txt", ".md"], type="filepath")
            params = gr.Code("{}", language="json", lines=2, label="Builder settings (JSON)")
            needle_attention = gr.Checkbox(False, label="Needle attention per cell",
                                           info="captures each cell's question rows; slower (no prefix sharing)")
            threshold = gr.Number(0, minimum=0, maximum=1, label="Effective-length threshold",
                                  info="0 = 85% of the score at the shortest length; else a fixed accuracy")
        b_inputs = b_controls()
        with gr.Row():
            estimate_button = gr.Button("Estimate time")
            run_button = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
            cancel = gr.Button("Cancel", variant="stop")
            resume_id = gr.Textbox(label="Sweep id to resume", scale=2)
            resume_button = gr.Button("Resume")
            executor = gr.Radio([IN_PROCESS, RAY], value=RAY if cluster_offered() else IN_PROCESS, label="Run on",
                                visible=cluster_offered(), info="Ray: the cells go to the cluster's workers")
        status = gr.Markdown("Set a grid and press **Estimate time** or **Run sweep**.")
        with gr.Row():
            heat_a = gr.Plot(label="Heatmap A", elem_id="sweep-heatmap")
            heat_b = gr.Plot(label="Heatmap B", visible=False)
            diff = gr.Plot(label="B minus A", visible=False)
        mass_plot = gr.Plot(label="Needle attention mass", visible=False)
        with gr.Row():
            curve = gr.Plot(label="Position curve")
            length_plot = gr.Plot(label="Length curve")
        cells = gr.Dataframe(headers=TABLE_COLUMNS + ["config"], label="Cells (click a row, or a heatmap cell, for "
                             "its details)", interactive=False, wrap=True)
        picked = gr.Textbox(elem_id="sweep-picked", elem_classes="lab-hidden", show_label=False)
        with gr.Accordion("Cell details", open=True):
            detail = gr.JSON(visible=False)
            detail_table = gr.Dataframe(headers=["what", "value"], label="Cell", interactive=False, wrap=True,
                                        elem_id="sweep-cell-table")
            detail_prompt = gr.Textbox(label="Prompt", lines=6, max_lines=20, interactive=False)
            with gr.Row():
                cell_button = gr.Button("Attention views for this cell", elem_id="sweep-cell-attention")
                cell_stop = gr.Button("Cancel", variant="stop")
            with gr.Row():
                cell_profile = gr.Plot(label="Attention over the context (this cell)", visible=False)
                cell_mass = gr.Plot(label="Layer x head mass on the needle (this cell)", visible=False)
        sweep_ids = gr.State([])

    tab = SweepTab(status, cells, {"heat_a": heat_a, "heat_b": heat_b, "diff": diff, "curve": curve,
                                   "length": length_plot, "mass": mass_plot}, sweep_ids, session, config.status, store)
    grid_inputs = [task, lengths, depth_count, spacing, seeds, mode, haystack, params, needle_attention, upload,
                   *b_inputs, session]
    all_outputs = [status, cells, heat_a, heat_b, diff, curve, length_plot, mass_plot, sweep_ids, session,
                   config.status]
    estimate_button.click(estimate_time, [*grid_inputs, *config.all()], status, api_name="sweep_estimate",
                          concurrency_id="model")
    event = run_button.click(partial(run, tab), [*grid_inputs, threshold, executor, *config.all()], all_outputs,
                             api_name="sweep_run", concurrency_id="model")
    resumed = resume_button.click(partial(resume, tab), [resume_id, threshold, executor, session], all_outputs,
                                  api_name="sweep_resume", concurrency_id="model")
    cancel.click(None, cancels=[event, resumed], api_name=False)

    def on_pick(ids, rows, evt: gr.SelectData):  # gradio finds the event data by this annotation
        return show_cell(store, ids, rows.iloc[evt.index[0]].to_dict() if hasattr(rows, "iloc") else rows[evt.index[0]])

    cells.select(on_pick, [sweep_ids, cells], [detail, detail_table, detail_prompt], api_name=False)
    picked.change(partial(picked_cell, store), [sweep_ids, cells, picked], [detail, detail_table, detail_prompt],
                 api_name="sweep_pick_cell")
    attention = cell_button.click(partial(cell_attention, store), detail, [cell_profile, cell_mass],
                                  api_name="sweep_cell_attention", concurrency_id="model")
    cell_stop.click(None, cancels=[attention], api_name=False)
