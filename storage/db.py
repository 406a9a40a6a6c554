"""The run log: SQLAlchemy 2.0 typed mappings over SQLite (default) or any SQLAlchemy URL.

Schema changes are numbered migrations applied in order and recorded in `schema_migrations`;
the mapped classes below describe the schema the last migration leaves.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    cast,
    create_engine,
    delete,
    event,
    false,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from engines.config.errors import StorageError
from engines.config.paths import lab_home, persistent_storage

log = logging.getLogger("context_lab")


class Base(DeclarativeBase):
    pass


class SchemaMigration(Base):
    __tablename__ = "schema_migrations"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[datetime] = mapped_column(DateTime)


class LabSession(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)  # a visitor's hashed key; None: the CLI


class Share(Base):
    """A published session or run: anyone with the token may read it, nobody else may change it."""

    __tablename__ = "shares"
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"), index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class StoredContext(Base):
    """A long prompt stored once, keyed by the sha256 of its text."""

    __tablename__ = "contexts"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    chars: Mapped[int] = mapped_column(Integer)


RUN_KINDS = ("probe", "sweep", "sweep_cell", "conflicts", "head_masking", "sift", "sift_benchmark")


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    model: Mapped[str] = mapped_column(String(400), index=True)
    task: Mapped[str | None] = mapped_column(String(100), index=True)
    score: Mapped[float | None] = mapped_column(Float)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    seconds: Mapped[float | None] = mapped_column(Float)
    prompt_hash: Mapped[str | None] = mapped_column(ForeignKey("contexts.hash"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    cell: Mapped[str | None] = mapped_column(String(64))  # "length:depth:seed" for sweep cells


class Sweep(Base):
    """A grid of probe cells; its cells are runs of kind sweep_cell carrying its id."""

    __tablename__ = "sweeps"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(20))  # running, cancelled, done
    label: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)


MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "sessions, contexts and runs", [
        "CREATE TABLE sessions (id VARCHAR(32) PRIMARY KEY, name VARCHAR(200) NOT NULL, "
        "created_at TIMESTAMP NOT NULL)",
        "CREATE TABLE contexts (hash VARCHAR(64) PRIMARY KEY, text TEXT NOT NULL, chars INTEGER NOT NULL)",
        "CREATE TABLE runs (id VARCHAR(32) PRIMARY KEY, "
        "session_id VARCHAR(32) NOT NULL REFERENCES sessions(id), kind VARCHAR(40) NOT NULL, "
        "created_at TIMESTAMP NOT NULL, model VARCHAR(400) NOT NULL, task VARCHAR(100), "
        "score FLOAT, correct BOOLEAN, seconds FLOAT, prompt_hash VARCHAR(64) REFERENCES contexts(hash), "
        "config JSON NOT NULL, inputs JSON NOT NULL, outputs JSON NOT NULL, environment JSON NOT NULL)",
        "CREATE INDEX ix_runs_session_id ON runs (session_id)",
        "CREATE INDEX ix_runs_kind ON runs (kind)",
        "CREATE INDEX ix_runs_created_at ON runs (created_at)",
        "CREATE INDEX ix_runs_model ON runs (model)",
        "CREATE INDEX ix_runs_task ON runs (task)",
    ]),
    (2, "sweeps, and sweep cells as runs", [
        "CREATE TABLE sweeps (id VARCHAR(32) PRIMARY KEY, session_id VARCHAR(32) NOT NULL REFERENCES sessions(id), "
        "created_at TIMESTAMP NOT NULL, status VARCHAR(20) NOT NULL, label VARCHAR(200) NOT NULL, "
        "spec JSON NOT NULL, config JSON NOT NULL)",
        "CREATE INDEX ix_sweeps_session_id ON sweeps (session_id)",
        "ALTER TABLE runs ADD COLUMN sweep_id VARCHAR(32) REFERENCES sweeps(id)",
        "ALTER TABLE runs ADD COLUMN cell VARCHAR(64)",
        "CREATE INDEX ix_runs_sweep_id ON runs (sweep_id)",
        "CREATE UNIQUE INDEX ux_runs_sweep_cell ON runs (sweep_id, cell)",
    ]),
    (3, "session owners, and shared sessions and runs", [
        "ALTER TABLE sessions ADD COLUMN owner VARCHAR(64)",
        "CREATE INDEX ix_sessions_owner ON sessions (owner)",
        "CREATE TABLE shares (token VARCHAR(64) PRIMARY KEY, session_id VARCHAR(32) REFERENCES sessions(id), "
        "run_id VARCHAR(32) REFERENCES runs(id), created_at TIMESTAMP NOT NULL)",
        "CREATE INDEX ix_shares_session_id ON shares (session_id)",
        "CREATE INDEX ix_shares_run_id ON shares (run_id)",
    ]),
]


def data_dir() -> Path:
    """CONTEXT_LAB_DATA, else /data (a Space's persistent storage) when it exists, else the lab home."""
    if os.environ.get("CONTEXT_LAB_DATA"):
        return Path(os.environ["CONTEXT_LAB_DATA"]).expanduser()
    storage = persistent_storage()
    return storage / "context-lab" if storage else lab_home() / "data"


def database_url() -> str:
    return os.environ.get("CONTEXT_LAB_DATABASE_URL") or f"sqlite:///{data_dir() / 'lab.sqlite'}"


def logging_enabled() -> bool:
    return os.environ.get("CONTEXT_LAB_LOGGING", "1").lower() not in ("0", "false", "off", "no")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class Store:
    """Sessions and runs in one database. Thread-safe: every call opens its own ORM session."""

    def __init__(self, url: str | None = None):
        self.url = url or database_url()
        self.set_aside: Path | None = None  # a damaged SQLite file moved out of the way at start
        if self.url.startswith("sqlite:///") and not self.url.startswith("sqlite:///file:"):
            path = Path(self.url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.set_aside = set_aside_if_damaged(path)
        self.engine = create_engine(self.url, connect_args={"timeout": 30} if self.url.startswith("sqlite") else {})
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate_lock = threading.Lock()
        try:
            self.migrate()
        except SQLAlchemyError as exc:
            log.error("cannot open the run log at %s: %s", self.url, exc)
            raise StorageError(f"Cannot open the run log ({type(exc).__name__}); make its data directory "
                               "writable, free the lock, or set CONTEXT_LAB_DATA / CONTEXT_LAB_DATABASE_URL to "
                               "another place.") from exc

    def migrate(self) -> list[int]:
        """Apply the migrations not yet recorded; returns the versions applied now."""
        applied_now = []
        with self._migrate_lock, self.engine.begin() as conn:
            if not inspect(conn).has_table("schema_migrations"):
                conn.execute(text("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                                  "name VARCHAR(200) NOT NULL, applied_at TIMESTAMP NOT NULL)"))
            done = set(conn.execute(text("SELECT version FROM schema_migrations")).scalars())
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    conn.execute(text(statement))
                conn.execute(text("INSERT INTO schema_migrations (version, name, applied_at) "
                                  "VALUES (:v, :n, :t)"), {"v": version, "n": name, "t": _now()})
                applied_now.append(version)
        return applied_now

    def schema_version(self) -> int:
        with self._sessions() as db:
            return max(db.scalars(select(SchemaMigration.version)).all(), default=0)

    def new_session(self, name: str = "", owner: str | None = None) -> str:
        session_id = new_id()
        with self._sessions.begin() as db:
            db.add(LabSession(id=session_id, name=name or f"Session {_now():%Y-%m-%d %H:%M}",
                              created_at=_now(), owner=owner))
        return session_id

    def put_text(self, text_value: str) -> str:
        """Store a long text once; returns its sha256."""
        with self._sessions.begin() as db:
            return self._store_context(db, text_value)

    def get_text(self, digest: str) -> str | None:
        with self._sessions() as db:
            stored = db.get(StoredContext, digest)
            return stored.text if stored else None

    def _store_context(self, db: Session, prompt: str) -> str:
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        if db.get(StoredContext, digest) is None:
            db.add(StoredContext(hash=digest, text=prompt, chars=len(prompt)))
            db.flush()
        return digest

    def log_run(self, session_id: str, kind: str, config: dict, inputs: dict, outputs: dict,
                environment: dict, *, prompt: str | None = None, task: str | None = None,
                score: float | None = None, correct: bool | None = None,
                seconds: float | None = None, sweep_id: str | None = None, cell: str | None = None) -> str:
        """Write one run; the prompt text goes to `contexts` once per distinct text."""
        run_id = new_id()
        with self._sessions.begin() as db:
            self._ensure_session(db, session_id)
            prompt_hash = self._store_context(db, prompt) if prompt is not None else None
            db.add(Run(id=run_id, session_id=session_id, kind=kind, created_at=_now(),
                       model=config.get("model", {}).get("model", ""), task=task, score=score,
                       correct=correct, seconds=seconds, prompt_hash=prompt_hash, config=config,
                       inputs=inputs, outputs=outputs, environment=environment, sweep_id=sweep_id, cell=cell))
        return run_id

    def _ensure_session(self, db: Session, session_id: str) -> None:
        if db.get(LabSession, session_id) is None:
            db.add(LabSession(id=session_id, name=f"Session {_now():%Y-%m-%d %H:%M}", created_at=_now()))
            db.flush()

    def create_sweep(self, session_id: str, spec: dict, config: dict, label: str = "") -> str:
        sweep_id = new_id()
        with self._sessions.begin() as db:
            self._ensure_session(db, session_id)
            db.add(Sweep(id=sweep_id, session_id=session_id, created_at=_now(), status="running",
                         label=label or spec.get("task", "sweep"), spec=spec, config=config))
        return sweep_id

    def get_sweep(self, sweep_id: str) -> dict[str, Any] | None:
        with self._sessions() as db:
            sweep = db.get(Sweep, sweep_id)
            if sweep is None:
                return None
            return {"id": sweep.id, "session_id": sweep.session_id, "status": sweep.status, "label": sweep.label,
                    "created_at": sweep.created_at.isoformat(timespec="seconds"), "spec": sweep.spec,
                    "config": sweep.config}

    def set_sweep_status(self, sweep_id: str, status: str) -> None:
        with self._sessions.begin() as db:
            db.get(Sweep, sweep_id).status = status

    def sweep_cells(self, sweep_id: str) -> list[dict[str, Any]]:
        """The finished cells of a sweep, as stored runs, oldest first."""
        query = select(Run).where(Run.sweep_id == sweep_id, Run.kind == "sweep_cell").order_by(Run.created_at)
        with self._sessions() as db:
            return [_run_dict(run) for run in db.scalars(query)]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._sessions() as db:
            run = db.get(Run, run_id)
            if run is None:
                return None
            prompt = db.get(StoredContext, run.prompt_hash).text if run.prompt_hash else None
            return _run_dict(run) | {"prompt": prompt}

    def list_runs(self, session_id: str | None = None, limit: int = 200, *, kind: str | None = None,
                  model: str | None = None, task: str | None = None, since: datetime | None = None,
                  min_score: float | None = None, include_cells: bool = True,
                  owners: Collection[str | None] | None = None) -> list[dict[str, Any]]:
        """Runs, newest first, filtered by the typed columns people filter on (and by their
        sessions' owners, see `list_sessions`)."""
        query = select(Run).order_by(Run.created_at.desc()).limit(limit)
        if owners is not None:
            query = query.join(LabSession, Run.session_id == LabSession.id).where(_owned_by(owners))
        if session_id:
            query = query.where(Run.session_id == session_id)
        if kind:
            query = query.where(Run.kind == kind)
        if model:
            query = query.where(Run.model.contains(model))
        if task:
            query = query.where(Run.task.contains(task))
        if since is not None:
            query = query.where(Run.created_at >= since)
        if min_score is not None:
            query = query.where(Run.score >= min_score)
        if not include_cells and not kind:
            query = query.where(Run.kind != "sweep_cell")
        with self._sessions() as db:
            return [_run_dict(run) for run in db.scalars(query)]

    def list_sessions(self, owners: Collection[str | None] | None = None) -> list[dict[str, Any]]:
        """Every session with its run count, newest first; with `owners`, only theirs (None in it
        stands for the sessions no visitor owns: those the CLI logged)."""
        counts = select(Run.session_id, func.count(Run.id)).group_by(Run.session_id)
        query = select(LabSession).order_by(LabSession.created_at.desc())
        if owners is not None:
            query = query.where(_owned_by(owners))
        with self._sessions() as db:
            runs = dict(db.execute(counts).all())
            return [{"id": s.id, "name": s.name, "created_at": s.created_at.isoformat(timespec="seconds"),
                     "runs": runs.get(s.id, 0)} for s in db.scalars(query)]

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        with self._sessions() as db:
            found = db.get(LabSession, session_id)
            return None if found is None else {"id": found.id, "name": found.name, "owner": found.owner,
                                                "created_at": found.created_at.isoformat(timespec="seconds")}

    def share(self, *, session_id: str | None = None, run_id: str | None = None) -> str:
        """Publish a session or a run; returns its unguessable token (the same one when shared again)."""
        with self._sessions.begin() as db:
            found = db.scalars(select(Share).where(Share.session_id == session_id, Share.run_id == run_id)).first()
            if found is not None:
                return found.token
            token = secrets.token_urlsafe(24)
            db.add(Share(token=token, session_id=session_id, run_id=run_id, created_at=_now()))
        return token

    def shared_item(self, token: str) -> dict[str, str | None] | None:
        """What a share token opens: {"session_id": ..., "run_id": ...}, or None."""
        with self._sessions() as db:
            found = db.get(Share, token) if token and len(token) <= 64 else None
            return None if found is None else {"session_id": found.session_id, "run_id": found.run_id}

    def is_shared(self, *, session_id: str | None = None, run_id: str | None = None) -> bool:
        """Whether this session is published, or this run is (itself or through its session)."""
        with self._sessions() as db:
            if run_id is not None:
                run = db.get(Run, run_id)
                if run is None:
                    return False
                session_id = run.session_id
            clause = Share.session_id == session_id
            if run_id is not None:
                clause = or_(clause, Share.run_id == run_id)
            return db.scalars(select(Share.token).where(clause)).first() is not None

    def delete_run(self, run_id: str) -> int:
        """Delete a run (a sweep's summary run takes its sweep and cells with it) and the stored texts
        nothing refers to any more; returns how many runs went."""
        with self._sessions.begin() as db:
            run = db.get(Run, run_id)
            if run is None:
                return 0
            runs = [run]
            if run.kind == "sweep" and run.sweep_id:
                runs = list(db.scalars(select(Run).where(Run.sweep_id == run.sweep_id)))
            return self._delete(db, runs, [db.get(Sweep, run.sweep_id)] if len(runs) > 1 else [])

    def delete_session(self, session_id: str) -> int:
        """Delete a session with its runs, sweeps and shares; returns how many runs went."""
        with self._sessions.begin() as db:
            runs = list(db.scalars(select(Run).where(Run.session_id == session_id)))
            sweeps = list(db.scalars(select(Sweep).where(Sweep.session_id == session_id)))
            count = self._delete(db, runs, sweeps)
            db.execute(delete(Share).where(Share.session_id == session_id))
            db.execute(delete(LabSession).where(LabSession.id == session_id))
            return count

    def _delete(self, db: Session, runs: list[Run], sweeps: list[Sweep | None]) -> int:
        ids = [r.id for r in runs]
        texts = {r.prompt_hash for r in runs} | {_upload_of(r.inputs.get("probe", {})) for r in runs}
        texts |= {_upload_of(w.spec) for w in sweeps if w is not None}
        db.execute(delete(Share).where(Share.run_id.in_(ids)))
        db.execute(delete(Run).where(Run.id.in_(ids)))
        db.execute(delete(Sweep).where(Sweep.id.in_([w.id for w in sweeps if w is not None])))
        for digest in texts - {None}:  # a text goes once no run or sweep names it
            named = select(Run.id).where(or_(Run.prompt_hash == digest, cast(Run.inputs, Text).contains(digest)))
            if (db.scalars(named).first() is None
                    and db.scalars(select(Sweep.id).where(cast(Sweep.spec, Text).contains(digest))).first() is None):
                db.execute(delete(StoredContext).where(StoredContext.hash == digest))
        return len(ids)

    def rename_session(self, session_id: str, name: str) -> None:
        name = name.strip()
        if not name or len(name) > 200:
            raise StorageError("A session name needs 1 to 200 characters.")
        with self._sessions.begin() as db:
            found = db.get(LabSession, session_id)
            if found is None:
                raise StorageError(f"No session with id '{session_id}'.")
            found.name = name


def _owned_by(owners: Collection[str | None]):
    """Sessions whose owner is one of `owners` (None in it: sessions without an owner)."""
    known = [o for o in owners if o is not None]
    clauses = ([LabSession.owner.in_(known)] if known else []) + ([LabSession.owner.is_(None)] if None in owners else [])
    return or_(*clauses) if clauses else false()


def _upload_of(spec: dict) -> str | None:
    return (spec.get("params") or {}).get("_upload_sha256")


def set_aside_if_damaged(path: Path) -> Path | None:
    """Run SQLite's quick_check on an existing run log; a damaged file (and its WAL) is renamed, never
    written into, and the lab starts a new one. Returns where the damaged file went."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.OperationalError:  # locked or unreadable, not damaged: opening it says what to do
        return None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "disk image is malformed"
        verdict = str(exc)
    finally:
        conn.close()
    if verdict == "ok":
        return None
    moved = path.with_name(f"{path.name}.damaged-{_now():%Y%m%d-%H%M%S}")
    try:
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                Path(f"{path}{suffix}").rename(f"{moved}{suffix}")
    except OSError as exc:
        raise StorageError("The run log is damaged and could not be moved aside; the lab runs without it. "
                           "Move or repair the damaged database file and restart.") from exc
    log.error("the run log %s failed SQLite's quick_check (%s); moved to %s, a new one is started",
              path, verdict[:200], moved)
    return moved


def _run_dict(run: Run) -> dict[str, Any]:
    return {"id": run.id, "session_id": run.session_id, "kind": run.kind,
            "created_at": run.created_at.isoformat(timespec="seconds"), "model": run.model,
            "task": run.task, "score": run.score, "correct": run.correct, "seconds": run.seconds,
            "prompt_hash": run.prompt_hash, "config": run.config, "inputs": run.inputs,
            "outputs": run.outputs, "environment": run.environment, "sweep_id": run.sweep_id, "cell": run.cell}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
