"""A visitor's jobs are counted when they are put in the queue (gradio's validator hook runs before
an event is queued), so one visitor cannot fill the queue every other visitor waits in. The count
is of jobs waiting or running for the same visitor (a browser's key, or an API client's connection
until it has one); gradio itself shows each job's place in the queue."""
from __future__ import annotations

import inspect

import gradio as gr

from engines.config.policy import limits, public_mode

_visitor_of: dict[str, str] = {}  # session hash -> visitor key, for the jobs now in the queue


def guard(demo: gr.Blocks, concurrency_id: str = "model") -> None:
    """On a public Space, limit every event of `concurrency_id` (the jobs that hold the model) per
    visitor. (A validator also checks the inputs' types before queueing; a value a component refuses
    then comes back as a bare 400, which a browser never sends.)"""
    if not public_mode():
        return
    for fn in demo.fns.values():
        if fn.concurrency_id == concurrency_id:
            fn.validator = _validator(demo, len(fn.inputs))


def _validator(demo: gr.Blocks, inputs: int):
    """A validator taking the event's inputs and the request (gradio finds the request by the
    annotation and the signature, so both are declared for this number of inputs)."""
    def admit(*values):
        *values, request = values
        refusal = refusal_for(demo, values, request)
        first = [gr.validate(refusal is None, refusal or "")]
        return first + [gr.validate(True, "")] * (inputs - 1)

    parameter = inspect.Parameter
    admit.__signature__ = inspect.Signature(
        [parameter(f"input_{i}", parameter.POSITIONAL_OR_KEYWORD) for i in range(inputs)]
        + [parameter("request", parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)])
    admit.__annotations__ = {"request": gr.Request}
    return admit


def refusal_for(demo: gr.Blocks, values, request: gr.Request | None) -> str | None:
    if request is None or demo._queue is None:
        return None
    state = next((v for v in values if isinstance(v, dict) and v.get("visitor")), None)
    queued = {event.session_hash for event in list(demo._queue.event_ids_to_events.values())}
    for stale in set(_visitor_of) - queued:
        _visitor_of.pop(stale, None)
    _visitor_of[request.session_hash] = state["visitor"] if state else request.session_hash
    visitor = _visitor_of[request.session_hash]
    mine = sum(1 for event in list(demo._queue.event_ids_to_events.values())
               if _visitor_of.get(event.session_hash, event.session_hash) == visitor)
    cap = limits().queued_jobs
    if mine >= cap:
        return (f"You already have {mine} job{'s' if mine != 1 else ''} waiting or running (at most {cap} at once "
                "here); wait for one to finish or cancel it, then run this again.")
    return None
