"""Sessions tab: this visitor's logged runs, filtered; a run's plots re-rendered from stored data;
replay, rename, delete, share, export and import; logging switched off; and the page-load handler
that gives each browser its visitor key and opens ?session=ID, ?run=ID and ?share=TOKEN links.

Everything a visitor can reach goes through services.visitors, which says what is theirs."""
from __future__ import annotations

import json
import tempfile
from datetime import datetime
from functools import partial
from pathlib import Path

import gradio as gr
from sqlalchemy.exc import SQLAlchemyError

from engines.config.errors import LabError
from engines.config.policy import limits
from engines.config.specs import RunConfig
from services import visitors
from services.replay import replay
from storage.db import RUN_KINDS, Store
from ui import figures
from ui.text import Refusal, badge, key_values

CELL_COLUMNS = ["length", "depth", "seed", "correct", "score", "answer", "expected"]
RUN_COLUMNS = ["when", "kind", "task", "length", "depth", "question", "answer", "score", "correct", "model", "id"]
KINDS = ["all", *RUN_KINDS]
PLOTS = 4
SHARE_WHAT = ["this run", "the chosen session"]


def told(action):
    """Run a run-log action for a handler: a refusal or a run log that cannot be read becomes a
    sentence (never a traceback or a server path)."""
    try:
        return action()
    except LabError as exc:
        raise Refusal(exc) from exc
    except SQLAlchemyError as exc:
        raise Refusal(f"The run log cannot be used right now ({type(exc).__name__}); try again later.") from exc


def session_choices(store: Store, state) -> list[tuple[str, str]]:
    mine = told(lambda: visitors.sessions(store, state))
    return [("all my sessions", "")] + [(f"{s['name']} ({s['id']}, {s['runs']} runs)", s["id"]) for s in mine]


def list_sessions(store: Store, state):
    return gr.Dropdown(choices=session_choices(store, state))


def run_rows(store: Store, session_id, kind, model, task, since, min_score, cells, state) -> list[list]:
    try:
        since_date = datetime.fromisoformat(since.strip()) if since and since.strip() else None
    except ValueError as exc:
        raise Refusal(f"'{since}' is not a date; write it as YYYY-MM-DD.") from exc
    try:
        lowest = float(min_score) if min_score and str(min_score).strip() else None
    except ValueError as exc:
        raise Refusal(f"'{min_score}' is not a number; give a score such as 0.5.") from exc
    runs = told(lambda: visitors.runs(
        store, state, session_id or None, limit=500, kind=None if kind == "all" else kind,
        model=(model or "").strip() or None, task=(task or "").strip() or None, since=since_date,
        min_score=lowest, include_cells=bool(cells)))
    return [readable_row(r) for r in runs]


def readable_row(run: dict) -> list:
    """A run as a person reads it: when, what was asked at which length and depth, what came back."""
    probe, outputs = run["inputs"].get("probe") or {}, run["outputs"]
    grid = run["inputs"].get("sweep") or {}
    answer = outputs.get("answer", outputs.get("text", ""))
    fields = {"when": run["created_at"].replace("T", " "), "kind": run["kind"], "task": run["task"] or "",
              "length": probe.get("length", ",".join(map(str, grid.get("lengths", [])))),
              "depth": probe.get("depth", f"{len(grid['depths'])} depths" if grid.get("depths") else ""),
              "question": str(run["inputs"].get("question", ""))[:80], "answer": str(answer or "")[:80],
              "score": run["score"], "correct": run["correct"], "model": run["model"], "id": run["id"]}
    return [fields[c] for c in RUN_COLUMNS]


def unavailable() -> None:
    """The Sessions tab when the run log could not be opened at start."""
    with gr.Tab("Sessions", id="sessions"):
        gr.Markdown("**The run log could not be opened**, so runs are not saved and there are no sessions to "
                    "browse; everything else works. The lab's operator can set `CONTEXT_LAB_DATA` to a writable "
                    "directory (or `CONTEXT_LAB_DATABASE_URL` to a database) and restart the lab.",
                    elem_id="sessions-unavailable")


def record_rows(run: dict) -> list[list[str]]:
    """The opened run as (what, value) rows: the readable row, then its configuration and timings."""
    config = RunConfig.from_dict(run["config"])  # stored configs were checked when written or imported
    settings = {"RoPE": config.rope.label, "mask": config.mask.label, "decoding": config.decoding.label,
                "context transform": config.transform.label if config.transform.kind != "none" else None,
                "context knob": (f"{config.knob:g} at layer {run['outputs']['knob']['layer']}"
                                 if config.knob and "knob" in run["outputs"] else config.knob or None),
                "max new tokens": config.max_new_tokens, "chat template": config.chat_template,
                "seconds": run.get("seconds"),
                "session": run["session_id"], "replay of": run["inputs"].get("replay_of")}
    readable = dict(zip(RUN_COLUMNS, readable_row(run)))
    return key_values({k: v for k, v in (readable | settings).items() if v not in (None, "")})


def sweep_cells(run: dict) -> gr.Dataframe:
    """A sweep's cells under its row (the opened sweep expanded); hidden for other runs."""
    cells = run["outputs"].get("cells") if run["kind"] == "sweep" else None
    rows = [[c.get(k) for k in CELL_COLUMNS] for c in cells or []]
    return gr.Dataframe(rows, headers=CELL_COLUMNS, visible=bool(cells))


def open_run(store: Store, rid, state):
    """A run of this visitor's (or a published one): its record (as JSON for clients, as a table on the
    page), prompt and plots from the stored data, and a sweep's cells."""
    run = told(lambda: visitors.readable_run(store, state, (rid or "").strip()))
    figs = figures.run_figures(run)
    shown = {k: v for k, v in run.items() if k != "prompt"}
    return [shown, run["prompt"] or ""] + [gr.Plot(figs[i], visible=True) if i < len(figs) else
                                           gr.Plot(None, visible=False) for i in range(PLOTS)] + [
        record_rows(run), sweep_cells(run)]


def pick(store: Store, rows, state, evt: gr.SelectData):
    rid = rows.iloc[evt.index[0]]["id"] if hasattr(rows, "iloc") else rows[evt.index[0]][RUN_COLUMNS.index("id")]
    return [rid] + open_run(store, rid, state)


def do_replay(store: Store, rid, state, progress=gr.Progress()):
    """Run it again; the replay is logged in this visitor's own session."""
    rid = (rid or "").strip()
    told(lambda: visitors.readable_run(store, state, rid))
    session_id, state = told(lambda: visitors.session_to_log(store, state))
    result = told(lambda: replay(store, rid, lambda f, m: progress(f, desc=m), session_id))
    return result, state, replay_badge(result), [[what, str(change["stored"])[:200], str(change["now"])[:200]]
                                                 for what, change in result["differences"].items()]


def replay_badge(result: dict) -> str:
    new_id = result.get("replay_run_id") or result.get("replay_sweep_id")
    return badge(result["identical"], "identical" if result["identical"] else "differs",
                 [("replay of", result["run_id"]), ("logged as", str(new_id))])


def do_rename(store: Store, session_id, name, state):
    if not session_id:
        raise Refusal("Choose a session to rename first.")
    told(lambda: visitors.rename(store, state, session_id, name or ""))
    return gr.Dropdown(choices=session_choices(store, state), value=session_id)


def delete_session(store: Store, session_id, state):
    """Delete the chosen session of this visitor's, with its runs and the texts only they used."""
    if not session_id:
        raise Refusal("Choose a session to delete first.")
    deleted = told(lambda: visitors.delete(store, state, session_id=session_id))
    return gr.Dropdown(choices=session_choices(store, state), value=""), f"The session was deleted ({deleted} runs)."


def delete_run(store: Store, run_id, state):
    """Delete the run in the run box (a sweep's summary run takes its cells with it)."""
    run_id = (run_id or "").strip()
    if not run_id:
        raise Refusal("Open a run to delete first.")
    deleted = told(lambda: visitors.delete(store, state, run_id=run_id))
    return "", f"Run {run_id} was deleted ({deleted} run{'s' if deleted != 1 else ''})."


def do_share(store: Store, what, session_id, run_id, state, request: gr.Request | None = None) -> str:
    """Publish this run or the chosen session; returns the link anyone may open, read-only."""
    run_id = (run_id or "").strip() if what == SHARE_WHAT[0] else ""
    if not run_id and not session_id:
        raise Refusal("Open a run (or choose a session) to share first.")
    token = told(lambda: visitors.share(store, state, session_id=session_id, run_id=run_id))
    page = (request.headers.get("referer") or "").split("?")[0] if request is not None else ""
    return f"{page}?share={token}"


def do_export(store: Store, session_id, state):
    if not session_id:
        raise Refusal("Choose a session to export first.")
    data = told(lambda: visitors.export(store, state, session_id))
    path = Path(tempfile.mkdtemp()) / f"context-lab-session-{session_id}.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    return str(path)


def do_import(store: Store, path, state):
    if not path:
        raise Refusal("Choose a session file to import first.")
    size, cap = Path(path).stat().st_size, limits().file_mb
    if size > cap * 2**20:
        raise Refusal(f"The file is {size / 2**20:.1f} MB; this lab imports session files up to {cap} MB.")
    new_id, state = told(lambda: visitors.import_for(store, state, Path(path).read_bytes()))
    return gr.Dropdown(choices=session_choices(store, state), value=new_id), f"Imported as session `{new_id}`.", state


def closed_run() -> list:
    """The opened run's views emptied: run id, record, prompt, plots, replay, share link."""
    return ["", None, "", *[gr.Plot(None, visible=False) for _ in range(PLOTS)], None, "", [],
            gr.Dataframe(visible=False), "", []]


def set_logging(on, state):
    return visitors.with_visitor(state) | {"log": bool(on)}


def on_page_load(store: Store, key, state, request: gr.Request):
    """Give this browser its visitor key (kept in its localStorage), continue its newest session,
    and open ?run=ID, ?session=ID or ?share=TOKEN when the visitor may read it."""
    state = visitors.with_visitor(state, key)
    params = dict(request.query_params) if request else {}
    run_id, session_id = params.get("run", ""), params.get("session", "")
    state["id"] = told(lambda: visitors.latest_session(store, state))
    shared = told(lambda: store.shared_item(params["share"])) if params.get("share") else None
    if shared:
        run_id, session_id = shared["run_id"] or "", shared["session_id"] or ""
    try:
        run = visitors.readable_run(store, state, run_id) if run_id else None
    except LabError:
        run = None
    if session_id and not told(lambda: visitors.can_read_session(store, state, session_id)):
        session_id = ""
    choices = session_choices(store, state)
    if session_id and session_id not in [c[1] for c in choices]:  # a session shared with this visitor
        found = store.get_session(session_id)
        choices.append((f"{found['name']} ({session_id}, shared with you, read-only)", session_id))
    opened = open_run(store, run["id"], state) if run else [gr.skip()] * (4 + PLOTS)
    return [state["visitor"], state, gr.Tabs(selected="sessions") if run or session_id else gr.skip(),
            gr.Dropdown(choices=choices, value=session_id), run["id"] if run else gr.skip(), *opened,
            run_rows(store, session_id, "all", "", "", "", "", False, state)]


def build(store: Store, session: gr.State, tabs: gr.Tabs, visitor_key: gr.BrowserState):
    """Render the tab (with no visitor's data in the page: the load handler fills it per visitor);
    returns the page-load handler, its inputs and outputs."""
    with gr.Tab("Sessions", id="sessions"):
        with gr.Row():
            chosen = gr.Dropdown([("all my sessions", "")], value="", label="Session", scale=3, allow_custom_value=True)
            refresh = gr.Button("Refresh")
            new_name = gr.Textbox(label="Rename the chosen session to", scale=2)
            rename = gr.Button("Rename")
            logging_on = gr.Checkbox(True, label="Log my runs", info="on: each run is kept in your session, to open, "
                                     "replay or share later; off: nothing from this browser is written")
        with gr.Row():
            kind = gr.Dropdown(KINDS, value="all", label="Kind")
            model = gr.Textbox(label="Model contains")
            task = gr.Textbox(label="Task contains")
            since = gr.Textbox(label="Since (YYYY-MM-DD)")
            min_score = gr.Textbox(label="Score at least")
            cells = gr.Checkbox(False, label="Show sweep cells")
        runs = gr.Dataframe(headers=RUN_COLUMNS, label="Runs, newest first (click one to open it)", interactive=False,
                            wrap=True, elem_id="sessions-runs")
        with gr.Row():
            run_id = gr.Textbox(label="Run id", scale=3, elem_id="sessions-run-id")
            open_button = gr.Button("Open", elem_id="sessions-open")
            replay_button = gr.Button("Replay", variant="primary", elem_id="sessions-replay")
            delete_run_button = gr.Button("Delete this run", variant="stop", elem_id="sessions-delete-run")
            delete_session_button = gr.Button("Delete the chosen session", variant="stop",
                                              elem_id="sessions-delete-session")
        with gr.Row():
            share_what = gr.Radio(SHARE_WHAT, value=SHARE_WHAT[0], label="Share", scale=1)
            share_button = gr.Button("Share: publish a read-only link", elem_id="sessions-share", scale=1)
            share_link = gr.Textbox(label="Link (anyone with it can view, nobody else can change)",
                                    interactive=False, scale=3, elem_id="sessions-share-link")
        run_json = gr.JSON(visible=False)  # the record for API clients; the page shows the table
        run_table = gr.Dataframe(headers=["what", "value"], label="Run", interactive=False, wrap=True,
                                 elem_id="sessions-run-table")
        cells_table = gr.Dataframe(headers=CELL_COLUMNS, label="This sweep's cells", interactive=False, wrap=True,
                                   visible=False)
        plots = [gr.Plot(visible=False) for _ in range(PLOTS)]
        replay_result = gr.JSON(visible=False)
        replay_shown = gr.HTML(elem_id="sessions-replay-badge")
        replay_table = gr.Dataframe(headers=["what differs", "stored", "now"], label="Replay: what differs from the "
                                    "stored result", interactive=False, wrap=True)
        with gr.Accordion("Stored prompt", open=False):
            prompt = gr.Textbox(lines=8, max_lines=25, interactive=False, show_label=False)
        with gr.Row():
            export_button = gr.Button("Export the chosen session")
            exported = gr.File(label="Session file", interactive=False)
            to_import = gr.File(label="Import a session file (.json)", file_types=[".json"], type="filepath")
            import_button = gr.Button("Import")
        message = gr.Textbox(show_label=False, interactive=False, elem_id="sessions-message")

    filters = [chosen, kind, model, task, since, min_score, cells, session]
    opened = [run_id, run_json, prompt, *plots, replay_result, share_link, run_table, cells_table, replay_shown,
              replay_table]
    for control in filters[:-1]:
        control.change(partial(run_rows, store), filters, runs, api_name=False)
        control.input(closed_run, None, opened, api_name=False)  # a new filter closes the opened run
    refresh.click(partial(list_sessions, store), session, chosen, api_name="list_sessions").then(
        partial(run_rows, store), filters, runs, api_name="list_runs")
    gr.on([open_button.click, run_id.submit], partial(open_run, store), [run_id, session],
          [run_json, prompt, *plots, run_table, cells_table], api_name="open_run")

    def on_pick(rows, state, evt: gr.SelectData):  # gradio finds the event data by this annotation
        return pick(store, rows, state, evt)

    def on_share(what, session_id, rid, state, request: gr.Request):  # likewise the request
        return do_share(store, what, session_id, rid, state, request)

    def on_load(key, state, request: gr.Request):
        return on_page_load(store, key, state, request)

    runs.select(on_pick, [runs, session], [run_id, run_json, prompt, *plots, run_table, cells_table], api_name=False)
    replay_button.click(partial(do_replay, store), [run_id, session], [replay_result, session, replay_shown,
                                                                       replay_table], api_name="replay",
                        concurrency_id="model")
    rename.click(partial(do_rename, store), [chosen, new_name, session], chosen, api_name="rename_session")
    delete_session_button.click(partial(delete_session, store), [chosen, session], [chosen, message],
                                api_name="delete_session")
    delete_run_button.click(partial(delete_run, store), [run_id, session], [run_id, message], api_name="delete_run")
    share_button.click(on_share, [share_what, chosen, run_id, session], share_link, api_name="share")
    export_button.click(partial(do_export, store), [chosen, session], exported, api_name="export_session")
    import_button.click(partial(do_import, store), [to_import, session], [chosen, message, session],
                        api_name="import_session")
    logging_on.change(set_logging, [logging_on, session], session, api_name=False)
    return on_load, [visitor_key, session], [visitor_key, session, tabs, chosen, run_id, run_json, prompt, *plots,
                                             run_table, cells_table, runs]
