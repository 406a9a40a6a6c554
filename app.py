"""Context Lab: see and measure how language models use their context.

`python app.py` serves the web UI (the Hugging Face Space entry point); `python app.py SUBCOMMAND`
runs the same engines headless and prints JSON (`python app.py --help`).
"""
from __future__ import annotations

import os
import sys
import threading

from engines.config.paths import ASSETS
from engines.config.policy import limits

METHODS = ASSETS.parent / "docs" / "METHODS.md"


def build_ui(store):
    """Assemble the tabs around the shared configuration panel."""
    import gradio as gr

    from ui import (
        admission,
        benchmark_tab,
        context_tab,
        decoding_tab,
        gallery_tab,
        haystack,
        model_panel,
        probe,
        sessions,
        sift_tab,
        sweep,
    )

    with gr.Blocks(title="Context Lab") as demo:
        gr.Markdown("# Context Lab\nSee and measure how language models use, and fail to use, their context.",
                    elem_classes="lab-header")
        if store is not None and store.set_aside is not None:
            gr.Markdown("**The run log was damaged** (it failed SQLite's integrity check at start), so it was set "
                        "aside untouched and a new one was started: earlier runs are not listed. The operator "
                        "has the damaged file.", elem_id="run-log-set-aside")
        # this page's visitor key, session id and logging switch; the key also lives in the browser
        session = gr.State({"visitor": None, "id": None, "log": True})
        visitor_key = gr.BrowserState(None, storage_key="context-lab-visitor", secret="context-lab")
        config = model_panel.build()
        with gr.Tabs(selected="gallery") as tabs:
            gallery_tab.build(config)
            probe.build(config, store, session)
            haystack.build(config, store, session)
            sweep.build(config, store, session)
            benchmark_tab.build(config, store, session)
            context_tab.build(config)
            decoding_tab.build(config, store, session)
            sift_tab.build(config, store, session)
            if store is None:  # the run log could not be opened: the lab serves without it
                sessions.unavailable()
            else:
                on_load, load_inputs, load_outputs = sessions.build(store, session, tabs, visitor_key)
        with gr.Accordion("Methods, their references, and where the lab differs", open=False,
                          elem_id="methods"):
            gr.Markdown(METHODS.read_text())
        if store is not None:
            demo.load(on_load, load_inputs, load_outputs, api_name=False)
    admission.guard(demo)
    return demo


def preload_default_model() -> None:
    """Load the embedded model in the background so the first probe does not wait for it."""
    from engines.config.specs import ModelSpec
    from engines.model.loading import MANAGER, ModelError, console_progress

    try:
        MANAGER.get(ModelSpec(), console_progress)
    except ModelError as exc:
        print(f"[context-lab] the embedded model could not be loaded: {exc}", file=sys.stderr)


def serve() -> None:
    from engines.model.jobs import on_zero_gpu

    if on_zero_gpu():
        import spaces  # noqa: F401  (it patches torch for ZeroGPU, so it comes before anything imports torch)
    from storage.db import StorageError, Store

    try:
        store = Store()
    except StorageError as exc:  # the lab still serves; runs are not logged
        print(f"[context-lab] {exc} Runs will not be logged.", file=sys.stderr)
        store = None
    if store is not None and store.set_aside is not None:
        print(f"[context-lab] the run log failed its integrity check; moved to {store.set_aside}", file=sys.stderr)
    demo = build_ui(store)
    if os.environ.get("CONTEXT_LAB_PRELOAD", "1") != "0":
        threading.Thread(target=preload_default_model, name="preload", daemon=True).start()
    launch(demo, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


def launch(demo, **where) -> None:
    """Queue and serve the UI: four jobs at once (those holding the model take turns), uploads
    within the deployment's file cap, the lab's style and its one script (heatmap clicks)."""
    demo.queue(default_concurrency_limit=4).launch(css_paths=[ASSETS / "style.css"], js=(ASSETS / "lab.js").read_text(),
                                                   footer_links=["api", "settings"],
                                                   max_file_size=f"{limits().file_mb}mb", **where)


def main(argv: list[str]) -> int:
    if not argv:
        serve()
        return 0
    from cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
