"""Sessions tab: browse and filter logged runs, re-render a run's plots from stored data, replay it,
rename sessions, export and import them, switch logging off, and open ?session=ID / ?run=ID links."""
from __future__ import annotations

import json
import tempfile
from datetime import datetime
from functools import partial
from pathlib import Path

import gradio as gr

from services.replay import replay
from storage.db import StorageError, Store
from storage.transfer import export_session, import_session
from ui import figures

RUN_COLUMNS = ["id", "created_at", "kind", "task", "model", "score", "correct", "seconds", "session_id"]
KINDS = ["all", "probe", "sweep", "sweep_cell", "conflicts", "sift", "sift_benchmark", "head_masking"]
PLOTS = 4


def session_choices(store: Store) -> list[tuple[str, str]]:
    return [("all sessions", "")] + [(f"{s['name']} ({s['id']}, {s['runs']} runs)", s["id"])
                                     for s in store.list_sessions()]


def run_rows(store: Store, session_id, kind, model, task, since, min_score, cells) -> list[list]:
    try:
        since_date = datetime.fromisoformat(since.strip()) if since and since.strip() else None
    except ValueError as exc:
        raise gr.Error(f"'{since}' is not a date; write it as YYYY-MM-DD.") from exc
    try:
        lowest = float(min_score) if min_score and str(min_score).strip() else None
    except ValueError as exc:
        raise gr.Error(f"'{min_score}' is not a number; give a score such as 0.5.") from exc
    runs = store.list_runs(session_id or None, limit=500, kind=None if kind == "all" else kind,
                           model=(model or "").strip() or None, task=(task or "").strip() or None,
                           since=since_date, min_score=lowest, include_cells=bool(cells))
    return [[r[c] for c in RUN_COLUMNS] for r in runs]


def unavailable() -> None:
    """The Sessions tab when the run log could not be opened at start."""
    with gr.Tab("Sessions", id="sessions"):
        gr.Markdown("**The run log could not be opened**, so runs are not saved and there are no sessions to "
                    "browse; everything else works. Set `CONTEXT_LAB_DATA` to a writable directory (or "
                    "`CONTEXT_LAB_DATABASE_URL` to a database) and restart the lab.", elem_id="sessions-unavailable")


def open_run(store: Store, rid):
    """A stored run's record, prompt and plots, re-rendered from the stored data."""
    run = store.get_run((rid or "").strip())
    if run is None:
        raise gr.Error(f"No run with id '{rid}'. Pick one from the table.")
    figs = figures.run_figures(run)
    shown = {k: v for k, v in run.items() if k != "prompt"}
    return [shown, run["prompt"] or ""] + [gr.Plot(figs[i], visible=True) if i < len(figs) else
                                           gr.Plot(None, visible=False) for i in range(PLOTS)]


def pick(store: Store, rows, evt: gr.SelectData):
    rid = rows.iloc[evt.index[0]]["id"] if hasattr(rows, "iloc") else rows[evt.index[0]][0]
    return [rid] + open_run(store, rid)


def do_replay(store: Store, rid, progress=gr.Progress()):
    try:
        return replay(store, (rid or "").strip(), lambda f, m: progress(f, desc=m))
    except StorageError as exc:
        raise gr.Error(str(exc)) from exc


def do_rename(store: Store, session_id, name):
    if not session_id:
        raise gr.Error("Choose a session to rename first.")
    try:
        store.rename_session(session_id, name or "")
    except StorageError as exc:
        raise gr.Error(str(exc)) from exc
    return gr.Dropdown(choices=session_choices(store), value=session_id)


def do_export(store: Store, session_id):
    if not session_id:
        raise gr.Error("Choose a session to export first.")
    data = export_session(store, session_id)
    path = Path(tempfile.mkdtemp()) / f"context-lab-session-{session_id}.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    return str(path)


def do_import(store: Store, path):
    if not path:
        raise gr.Error("Choose a session file to import first.")
    try:
        new_id = import_session(store, Path(path).read_bytes())
    except StorageError as exc:
        raise gr.Error(str(exc)) from exc
    return gr.Dropdown(choices=session_choices(store), value=new_id), f"Imported as session `{new_id}`."


def set_logging(on, state):
    return dict(state or {"id": None, "log": True}) | {"log": bool(on)}


def deep_link(store: Store, request: gr.Request):
    """On page load: fresh session list and runs; ?run=ID opens a run, ?session=ID a session."""
    params = dict(request.query_params) if request else {}
    session_id = params.get("session") if params.get("session") and store.get_session(params["session"]) else ""
    run = store.get_run(params["run"]) if params.get("run") else None
    opened = open_run(store, run["id"]) if run else [gr.skip()] * (2 + PLOTS)
    selected = gr.Tabs(selected="sessions") if run or session_id else gr.skip()
    return [selected, gr.Dropdown(choices=session_choices(store), value=session_id),
            run["id"] if run else gr.skip(), *opened,
            run_rows(store, session_id, "all", "", "", "", "", False)]


def build(store: Store, session: gr.State, tabs: gr.Tabs):
    """Render the tab; returns the page-load handler for deep links and its outputs."""
    with gr.Tab("Sessions", id="sessions"):
        with gr.Row():
            chosen = gr.Dropdown(session_choices(store), value="", label="Session", scale=3)
            refresh = gr.Button("Refresh")
            new_name = gr.Textbox(label="Rename the chosen session to", scale=2)
            rename = gr.Button("Rename")
            logging_on = gr.Checkbox(True, label="Log my runs", info="off: nothing from this browser is written")
        with gr.Row():
            kind = gr.Dropdown(KINDS, value="all", label="Kind")
            model = gr.Textbox(label="Model contains")
            task = gr.Textbox(label="Task contains")
            since = gr.Textbox(label="Since (YYYY-MM-DD)")
            min_score = gr.Textbox(label="Score at least")
            cells = gr.Checkbox(False, label="Show sweep cells")
        runs = gr.Dataframe(headers=RUN_COLUMNS, label="Runs (click one to open it)", interactive=False, wrap=True)
        with gr.Row():
            run_id = gr.Textbox(label="Run id", scale=3, elem_id="sessions-run-id")
            open_button = gr.Button("Open", elem_id="sessions-open")
            replay_button = gr.Button("Replay", variant="primary", elem_id="sessions-replay")
        run_json = gr.JSON(label="Run")
        plots = [gr.Plot(visible=False) for _ in range(PLOTS)]
        replay_result = gr.JSON(label="Replay: identical to the stored result?")
        with gr.Accordion("Stored prompt", open=False):
            prompt = gr.Textbox(lines=8, max_lines=25, interactive=False, show_label=False)
        with gr.Row():
            export_button = gr.Button("Export the chosen session")
            exported = gr.File(label="Session file", interactive=False)
            to_import = gr.File(label="Import a session file (.json)", file_types=[".json"], type="filepath")
            import_button = gr.Button("Import")
        message = gr.Markdown()

    filters = [chosen, kind, model, task, since, min_score, cells]
    for control in filters:
        control.change(partial(run_rows, store), filters, runs, api_name=False)
    refresh.click(lambda: gr.Dropdown(choices=session_choices(store)), None, chosen, api_name=False).then(
        partial(run_rows, store), filters, runs, api_name=False)
    gr.on([open_button.click, run_id.submit], partial(open_run, store), run_id, [run_json, prompt, *plots],
          api_name="open_run")

    def on_pick(rows, evt: gr.SelectData):  # gradio finds the event data by this annotation
        return pick(store, rows, evt)

    runs.select(on_pick, runs, [run_id, run_json, prompt, *plots], api_name=False)
    replay_button.click(partial(do_replay, store), run_id, replay_result, api_name="replay", concurrency_id="model")
    rename.click(partial(do_rename, store), [chosen, new_name], chosen, api_name="rename_session")
    export_button.click(partial(do_export, store), chosen, exported, api_name="export_session")
    import_button.click(partial(do_import, store), to_import, [chosen, message], api_name="import_session")
    logging_on.change(set_logging, [logging_on, session], session, api_name=False)

    def on_load(request: gr.Request):  # gradio finds the request by this annotation (not through a partial)
        return deep_link(store, request)

    return on_load, [tabs, chosen, run_id, run_json, prompt, *plots, runs]
