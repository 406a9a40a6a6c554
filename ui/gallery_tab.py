"""Start here: the gallery of phenomena. Each card shows its paper's claim and the result the lab
stored for it (rendered at once, no model work), and reruns its study live on the panel's model
with an estimate, progress and Cancel."""
from __future__ import annotations

from functools import partial

import gradio as gr

from engines.config.policy import limits
from engines.model.jobs import model_job
from engines.model.loading import MANAGER
from services.gallery import Card, card_named, cards, result_sentence, run_card
from ui.figures import card_figures
from ui.model_panel import ConfigInputs, Panel, loaded_model, said_to_user
from ui.progress import Clock, duration

INTRO = ("**Start here.** Each card is one phenomenon of long contexts from the papers behind this lab: the "
         "paper's claim, what the lab measured on its embedded model (stored, shown at once) and where that "
         "differs from the paper. **Run it live** reruns the card on the model chosen in the panel above (sized "
         "for a CPU; the full size on a GPU). Hover over a plot for the answers behind each point; the tab named "
         "on each card lets you change every setting.")


def estimate_text(card: Card, stored: dict | None) -> str:
    if stored and stored["device"] == "cpu":
        return f"about {duration(stored['seconds'])} on a CPU like this lab's (model loaded)"
    return "time not measured yet"


def card_text(card: Card, stored: dict | None) -> str:
    differs = f"\n\n**Where the embedded model differs:** {card.differs}" if card.differs else ""
    return (f"### {card.title}\n*{card.paper}*\n\n**The claim:** {card.claim}{differs}\n\n"
            f"Live rerun: {estimate_text(card, stored)}. To explore further: the **{card.tab}** tab.")


def live(name: str, *values, progress=gr.Progress()):
    """Rerun one card's study, redrawing its figures as results arrive, with the time left."""
    card = card_named(name)
    with said_to_user():
        base = Panel.of(values).config()
        limits().check_run(base)
        loaded = loaded_model(base, progress)
        stored = card.stored()
        clock = Clock(progress, 1, stored["seconds"] if stored and stored["device"] == loaded.device else None)
        step = None
        for step in MANAGER.stream(base.model, model_job(run_card, card, base), seconds=clock.estimate):
            clock.total = step.total
            clock.step(step.done)
            yield ["Running live...", *card_figures(card.study, step.data)]
    if step is None:
        return
    yield [f"Live, {duration(clock.elapsed())}: {result_sentence(card, step.data)}", *card_figures(card.study, step.data)]


def card_view(card: Card, config: ConfigInputs) -> None:
    stored = card.stored()
    with gr.Column(min_width=340, elem_classes="gallery-card"):
        gr.Markdown(card_text(card, stored))
        result = gr.Textbox(result_sentence(card, stored["data"]) if stored else "Not built yet.",
                            label="What the embedded model showed", interactive=False, lines=2,
                            elem_id=f"gallery-result-{card.name}")
        plots = [gr.Plot(figure, show_label=False) for figure in (card_figures(card.study, stored["data"])
                                                                   if stored else [None])]
        with gr.Row():
            run = gr.Button("Run it live", variant="primary", size="sm", elem_id=f"gallery-run-{card.name}")
            cancel = gr.Button("Cancel", variant="stop", size="sm")
    event = run.click(partial(live, card.name), config.all(), [result, *plots],
                      api_name=f"gallery_{card.name.replace('-', '_')}", concurrency_id="model")
    cancel.click(None, cancels=[event], api_name=False)


def build(config: ConfigInputs) -> None:
    with gr.Tab("Start here", id="gallery"):
        gr.Markdown(INTRO)
        shown = cards()
        for first in range(0, len(shown), 2):
            with gr.Row(equal_height=False):
                for card in shown[first:first + 2]:
                    card_view(card, config)
