"""Who may see and change what in the run log (no gradio here).

Every browser (a random key kept in its localStorage) and every API client (a key the server
keeps for its connection) is a visitor. A visitor owns the sessions created for it: it sees,
opens, replays, renames, exports and deletes only those. Published items ("Share") are readable
by anyone with their link, never changeable by others. In private mode the sessions the CLI
logged (no owner) count as the person's own; on a public Space nobody sees them.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from engines.config.errors import StorageError
from engines.config.policy import public_mode
from storage.db import Store, logging_enabled
from storage.transfer import export_session, import_session

KEY = re.compile(r"[0-9a-f]{32}")


def new_key() -> str:
    return secrets.token_hex(16)


def with_visitor(state: dict | None, key: str | None = None) -> dict:
    """This page's state {"visitor", "id", "log"}, with a visitor key (the given one when well formed,
    the one it has, else a new one)."""
    state = {"visitor": None, "id": None, "log": True} | dict(state or {})
    if key and KEY.fullmatch(str(key)):
        state["visitor"] = key
    elif not (state["visitor"] and KEY.fullmatch(str(state["visitor"]))):
        state["visitor"] = new_key()
    return state


def owner_of(state: dict | None) -> str | None:
    """The stored owner for this page's visitor: a hash of its key, so the log never holds the key."""
    key = (state or {}).get("visitor")
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else None


def owners(state: dict | None) -> tuple[str | None, ...]:
    mine = tuple(o for o in (owner_of(state),) if o)
    return mine if public_mode() else mine + (None,)


def sessions(store: Store, state: dict | None) -> list[dict[str, Any]]:
    return store.list_sessions(owners(state))


def latest_session(store: Store, state: dict | None) -> str | None:
    """The visitor's newest session: a browser keeps logging into it across reloads."""
    mine = store.list_sessions((owner_of(state),)) if owner_of(state) else []
    return mine[0]["id"] if mine else None


def session_to_log(store: Store, state: dict | None) -> tuple[str, dict]:
    """The session this visitor's next run goes to (its current one if still its own, else a new one)."""
    state = with_visitor(state)
    current = store.get_session(state["id"]) if state.get("id") else None
    if current is None or current["owner"] != owner_of(state):
        state["id"] = latest_session(store, state) or store.new_session(owner=owner_of(state))
    return state["id"], state


def owns_session(store: Store, state: dict | None, session_id: str) -> dict:
    found = store.get_session(session_id) if session_id else None
    if found is None or found["owner"] not in owners(state):
        raise StorageError(f"No session of yours with id '{str(session_id)[:40]}'; choose one from the list.")
    return found


def can_read_session(store: Store, state: dict | None, session_id: str) -> bool:
    found = store.get_session(session_id) if session_id else None
    return found is not None and (found["owner"] in owners(state) or store.is_shared(session_id=session_id))


def readable_run(store: Store, state: dict | None, run_id: str) -> dict:
    """The run if it is this visitor's or published; otherwise the same sentence as for a missing run."""
    run = store.get_run(run_id) if run_id and len(run_id) <= 64 else None
    if run is None or not (store.get_session(run["session_id"])["owner"] in owners(state)
                           or store.is_shared(run_id=run_id)):
        raise StorageError(f"No run with id '{str(run_id)[:40]}' that you can open; pick one from the table.")
    return run


def owns_run(store: Store, state: dict | None, run_id: str) -> dict:
    run = readable_run(store, state, run_id)
    owns_session(store, state, run["session_id"])
    return run


def runs(store: Store, state: dict | None, session_id: str | None, **filters) -> list[dict[str, Any]]:
    """Runs of one session the visitor can read, or of all its own sessions."""
    if session_id:
        if not can_read_session(store, state, session_id):
            raise StorageError(f"No session with id '{str(session_id)[:40]}' that you can open.")
        return store.list_runs(session_id, **filters)
    return store.list_runs(None, owners=owners(state), **filters)


def rename(store: Store, state: dict | None, session_id: str, name: str) -> None:
    owns_session(store, state, session_id)
    store.rename_session(session_id, name)


def delete(store: Store, state: dict | None, *, session_id: str = "", run_id: str = "") -> int:
    """Delete one of the visitor's sessions or runs (with the texts nothing else uses); returns the runs deleted."""
    if run_id:
        owns_run(store, state, run_id)
        return store.delete_run(run_id)
    owns_session(store, state, session_id)
    return store.delete_session(session_id)


def share(store: Store, state: dict | None, *, session_id: str = "", run_id: str = "") -> str:
    """Publish one of the visitor's sessions or runs; returns the token of its link."""
    if run_id:
        owns_run(store, state, run_id)
        return store.share(run_id=run_id)
    owns_session(store, state, session_id)
    return store.share(session_id=session_id)


def export(store: Store, state: dict | None, session_id: str) -> dict:
    if not can_read_session(store, state, session_id):
        raise StorageError(f"No session with id '{str(session_id)[:40]}' that you can export.")
    return export_session(store, session_id)


def import_for(store: Store, state: dict | None, raw: bytes) -> tuple[str, dict]:
    """Import a session file as a new session of this visitor."""
    if not logging_enabled():
        raise StorageError("This lab does not keep runs (CONTEXT_LAB_LOGGING is off), so nothing can be imported.")
    state = with_visitor(state)
    return import_session(store, raw, owner_of(state)), state


def resumable_sweep(store: Store, state: dict | None, sweep_id: str) -> None:
    """Only the visitor's own sweeps can be resumed (a resumed sweep writes into its session)."""
    sweep = store.get_sweep(sweep_id) if sweep_id and len(sweep_id) <= 64 else None
    if sweep is None:
        raise StorageError(f"No sweep with id '{str(sweep_id)[:40]}'; check the id (the Sessions tab lists "
                           "your sweeps).")
    owns_session(store, state, sweep["session_id"])
