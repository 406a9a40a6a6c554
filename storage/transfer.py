"""Export a session to one JSON file and import it back, validated before anything is written.

An import is checked whole (size, nesting depth, version, every field's type, prompt hashes) and
written in one transaction under new ids, so a bad file writes nothing and an import never
overwrites what is already stored.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select

from engines.config.errors import LabError
from engines.config.specs import RunConfig
from storage.db import RUN_KINDS, LabSession, Run, StorageError, Store, StoredContext, Sweep, _now, _run_dict, new_id

FORMAT = "context-lab-session"
VERSION = 1
MAX_BYTES = 64 * 2**20
MAX_DEPTH = 64
MAX_RUNS = 100_000


class ImportRejected(StorageError):
    """An import file that cannot be taken; the message says what is wrong with it."""


def export_session(store: Store, session_id: str) -> dict[str, Any]:
    session = store.get_session(session_id)
    if session is None:
        raise StorageError(f"No session with id '{session_id}'; python app.py sessions lists them.")
    with store._sessions() as db:
        runs = [_run_dict(r) for r in db.scalars(select(Run).where(Run.session_id == session_id)
                                                 .order_by(Run.created_at))]
        sweeps = [{"id": w.id, "created_at": w.created_at.isoformat(), "status": w.status, "label": w.label,
                   "spec": w.spec, "config": w.config}
                  for w in db.scalars(select(Sweep).where(Sweep.session_id == session_id))]
        hashes = {r["prompt_hash"] for r in runs if r["prompt_hash"]}
        hashes |= {w["spec"].get("params", {}).get("_upload_sha256") for w in sweeps} - {None}
        contexts = {c.hash: c.text for c in db.scalars(select(StoredContext).where(StoredContext.hash.in_(hashes)))}
    for run in runs:
        run.pop("session_id")
    return {"format": FORMAT, "version": VERSION, "exported_at": _now().isoformat(),
            "session": {k: v for k, v in session.items() if k != "owner"}, "sweeps": sweeps, "runs": runs, "contexts": contexts}


def nesting_depth(raw: str) -> int:
    """The deepest bracket nesting in JSON text, outside strings (checked before parsing)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


RUN_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,), "kind": (str,), "created_at": (str,), "model": (str,), "task": (str, type(None)),
    "score": (int, float, type(None)), "correct": (bool, type(None)), "seconds": (int, float, type(None)),
    "prompt_hash": (str, type(None)), "config": (dict,), "inputs": (dict,), "outputs": (dict,),
    "environment": (dict,), "sweep_id": (str, type(None)), "cell": (str, type(None)),
}
SWEEP_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,), "created_at": (str,), "status": (str,), "label": (str,), "spec": (dict,), "config": (dict,),
}


def _check_fields(item: Any, fields: dict[str, tuple[type, ...]], where: str) -> None:
    if not isinstance(item, dict):
        raise ImportRejected(f"{where} must be an object.")
    for name, kinds in fields.items():
        if name not in item:
            raise ImportRejected(f"{where} is missing the field '{name}'.")
        value = item[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            allowed = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ImportRejected(f"{where}: '{name}' must be {allowed}, not {type(value).__name__}.")
    for name in ("created_at",):
        try:
            datetime.fromisoformat(item[name])
        except ValueError as exc:
            raise ImportRejected(f"{where}: '{name}' is not an ISO date and time.") from exc
    too_long = [n for n in ("id", "kind", "model", "task", "cell", "status", "label")
                if isinstance(item.get(n), str) and len(item[n]) > 400]
    if too_long:
        raise ImportRejected(f"{where}: '{too_long[0]}' is longer than 400 characters.")


def validate(raw: bytes) -> dict[str, Any]:
    """Parse and check an export file; raises ImportRejected with what to fix."""
    if len(raw) > MAX_BYTES:
        raise ImportRejected(f"The file is {len(raw) / 2**20:.1f} MB; session files up to {MAX_BYTES // 2**20} MB "
                             "can be imported.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportRejected("The file is not UTF-8 text; choose a session file exported by Context Lab.") from exc
    if nesting_depth(text) > MAX_DEPTH:
        raise ImportRejected(f"The file nests deeper than {MAX_DEPTH} levels; it is not a session export.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportRejected(f"The file is not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ImportRejected("This is not a Context Lab session file (its 'format' is not "
                             f"'{FORMAT}').")
    if data.get("version") != VERSION:
        raise ImportRejected(f"This session file is version {data.get('version')!r}; this lab imports "
                             f"version {VERSION}.")
    session, runs, sweeps, contexts = (data.get(k) for k in ("session", "runs", "sweeps", "contexts"))
    if not isinstance(session, dict) or not isinstance(session.get("name"), str) or not session["name"].strip():
        raise ImportRejected("The session needs a non-empty 'name'.")
    if not isinstance(runs, list) or not isinstance(sweeps, list) or not isinstance(contexts, dict):
        raise ImportRejected("'runs' and 'sweeps' must be lists and 'contexts' an object.")
    if len(runs) > MAX_RUNS:
        raise ImportRejected(f"The file has {len(runs)} runs; at most {MAX_RUNS} can be imported at once.")
    for digest, body in contexts.items():
        if not isinstance(body, str) or hashlib.sha256(body.encode()).hexdigest() != digest:
            raise ImportRejected(f"The stored text {digest[:12]}... does not match its hash; the file was changed.")
    for i, sweep in enumerate(sweeps):
        _check_fields(sweep, SWEEP_FIELDS, f"Sweep {i + 1}")
        _check_grid(sweep["spec"], f"Sweep {i + 1}")
    sweep_ids = {w["id"] for w in sweeps}
    if len(sweep_ids) < len(sweeps):
        raise ImportRejected("Two sweeps in the file have the same id; export the session again.")
    cells, configs = set(), set()
    for i, run in enumerate(runs):
        _check_fields(run, RUN_FIELDS, f"Run {i + 1}")
        if run["kind"] not in RUN_KINDS:
            raise ImportRejected(f"Run {i + 1} is of kind '{run['kind'][:40]}', which this lab does not know "
                                 f"({', '.join(RUN_KINDS)}).")
        if run["prompt_hash"] is not None and run["prompt_hash"] not in contexts:
            raise ImportRejected(f"Run {i + 1} refers to a prompt that the file does not contain.")
        if run["sweep_id"] is not None and run["sweep_id"] not in sweep_ids:
            raise ImportRejected(f"Run {i + 1} refers to a sweep that the file does not contain.")
        if run["kind"] == "sweep" and not isinstance(run["inputs"].get("sweep"), dict):
            raise ImportRejected(f"Run {i + 1} is a sweep without its grid ('inputs.sweep').")
        if run["kind"] == "sweep":
            _check_grid(run["inputs"]["sweep"], f"Run {i + 1}")
        if run["sweep_id"] is not None and run["cell"] is not None:
            if (run["sweep_id"], run["cell"]) in cells:
                raise ImportRejected(f"Run {i + 1} repeats the cell {run['cell'][:64]} of its sweep; a sweep holds "
                                     "each cell once.")
            cells.add((run["sweep_id"], run["cell"]))
        configs.add(json.dumps(run["config"], sort_keys=True))
    for config in configs:
        try:
            RunConfig.from_dict(json.loads(config))
        except (LabError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ImportRejected(f"A run's configuration cannot be read: {str(exc)[:300]}") from exc
    return data


def _check_grid(spec: dict, where: str) -> None:
    """A stored sweep grid names a task and gives at least one length, depth and seed."""
    if not isinstance(spec.get("task"), str) or not all(
            isinstance(spec.get(k), list) and spec[k] and all(isinstance(v, int | float) for v in spec[k])
            for k in ("lengths", "depths", "seeds")):
        raise ImportRejected(f"{where}: its grid needs a task and non-empty lists of lengths, depths and seeds.")


def import_session(store: Store, raw: bytes, owner: str | None = None) -> str:
    """Import an exported session under new ids, owned by `owner`; returns the new session id.
    All or nothing."""
    data = validate(raw)
    session_id = new_id()
    sweep_ids = {w["id"]: new_id() for w in data["sweeps"]}
    with store._sessions.begin() as db:
        db.add(LabSession(id=session_id, name=data["session"]["name"].strip()[:200], created_at=_now(), owner=owner))
        for digest, body in data["contexts"].items():
            if db.get(StoredContext, digest) is None:
                db.add(StoredContext(hash=digest, text=body, chars=len(body)))
        db.flush()
        for w in data["sweeps"]:
            db.add(Sweep(id=sweep_ids[w["id"]], session_id=session_id, created_at=datetime.fromisoformat(w["created_at"]),
                         status=w["status"], label=w["label"], spec=w["spec"], config=w["config"]))
        db.flush()
        for r in data["runs"]:
            db.add(Run(id=new_id(), session_id=session_id, kind=r["kind"], model=r["model"], task=r["task"],
                       created_at=datetime.fromisoformat(r["created_at"]), score=r["score"], correct=r["correct"],
                       seconds=r["seconds"], prompt_hash=r["prompt_hash"], config=r["config"],
                       inputs=r["inputs"] | {"imported_from": r["id"]}, outputs=r["outputs"],
                       environment=r["environment"], sweep_id=sweep_ids.get(r["sweep_id"]), cell=r["cell"]))
    return session_id
