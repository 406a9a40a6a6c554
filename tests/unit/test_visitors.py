"""Visitors on a real run log (SQLite, and PostgreSQL under .ci/run): each sees and changes only its
own sessions and runs, shares explicitly, deletes with the texts nothing else uses; a damaged SQLite
file is set aside at start, never written into."""
import pytest
from sqlalchemy import text

from engines.config.errors import StorageError
from services import visitors
from services.run_log import session_for
from storage.db import Store
from storage.transfer import export_session


def _log(store, session_id, prompt, kind="probe", **columns):
    return store.log_run(session_id, kind, {"model": {"model": "m"}}, {"question": "q"}, {"text": "a"}, {},
                         prompt=prompt, **columns)


def _texts(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM contexts")).scalar()


@pytest.fixture()
def two(blank_url, monkeypatch):
    """A public-mode store with visitors A and B, A holding one session with two runs."""
    monkeypatch.setenv("CONTEXT_LAB_PUBLIC", "1")
    store = Store(blank_url)
    _, a_session, a = session_for(store, None)
    _, b_session, b = session_for(store, None)
    runs = [_log(store, a_session, "shared prompt"), _log(store, a_session, "a's own prompt")]
    return store, a, b, a_session, b_session, runs


def test_a_visitor_sees_and_changes_only_its_own(two):
    store, a, b, a_session, b_session, (run, _) = two
    assert a["visitor"] != b["visitor"] and a_session != b_session
    assert [s["id"] for s in visitors.sessions(store, a)] == [a_session]
    assert [s["id"] for s in visitors.sessions(store, b)] == [b_session]
    assert {r["session_id"] for r in visitors.runs(store, b, None)} <= {b_session}
    assert visitors.readable_run(store, a, run)["id"] == run
    for attempt in (lambda: visitors.readable_run(store, b, run),
                    lambda: visitors.runs(store, b, a_session),
                    lambda: visitors.export(store, b, a_session),
                    lambda: visitors.rename(store, b, a_session, "mine now"),
                    lambda: visitors.delete(store, b, session_id=a_session),
                    lambda: visitors.delete(store, b, run_id=run),
                    lambda: visitors.share(store, b, run_id=run)):
        with pytest.raises(StorageError, match="No (run|session)"):
            attempt()
    assert store.get_session(a_session)["name"] != "mine now" and store.get_run(run) is not None
    assert session_for(store, a)[1] == a_session  # the same visitor keeps logging into its session


def test_shared_items_are_readable_by_link_and_never_changeable(two):
    store, a, b, a_session, _, (run, other) = two
    token = visitors.share(store, a, run_id=run)
    assert visitors.share(store, a, run_id=run) == token and len(token) >= 32
    assert store.shared_item(token) == {"session_id": None, "run_id": run}
    assert visitors.readable_run(store, b, run)["id"] == run
    with pytest.raises(StorageError):
        visitors.readable_run(store, b, other)  # sharing one run shares only that run
    with pytest.raises(StorageError):
        visitors.delete(store, b, run_id=run)
    session_token = visitors.share(store, a, session_id=a_session)
    assert store.shared_item(session_token)["session_id"] == a_session
    assert {r["id"] for r in visitors.runs(store, b, a_session)} == {run, other}
    assert visitors.export(store, b, a_session)["session"]["name"]
    assert "owner" not in export_session(store, a_session)["session"]
    with pytest.raises(StorageError):
        visitors.rename(store, b, a_session, "taken")


def test_delete_removes_runs_shares_and_texts_no_longer_used(two):
    store, a, b, a_session, b_session, (run, other) = two
    _log(store, b_session, "shared prompt")  # B's run uses the same text as A's first run
    visitors.share(store, a, run_id=run)
    assert _texts(store) == 2
    assert visitors.delete(store, a, run_id=other) == 1
    assert _texts(store) == 1 and store.get_run(other) is None  # "a's own prompt" went with its run
    assert visitors.delete(store, a, session_id=a_session) == 1
    assert store.get_session(a_session) is None and store.get_run(run) is None
    assert _texts(store) == 1  # still used by B's run
    _, fresh, _ = session_for(store, a)
    assert fresh != a_session and store.get_session(fresh)["owner"] == visitors.owner_of(a)


def test_deleting_a_sweep_run_takes_its_cells(two):
    store, a, _, a_session, _, _ = two
    sweep = store.create_sweep(a_session, {"task": "passkey", "lengths": [500], "depths": [0], "seeds": [1]}, {})
    cells = [_log(store, a_session, f"cell {i}", kind="sweep_cell", sweep_id=sweep, cell=f"500:{i}:1")
             for i in range(3)]
    summary = _log(store, a_session, None, kind="sweep", sweep_id=sweep)
    visitors.resumable_sweep(store, a, sweep)
    with pytest.raises(StorageError, match="No session of yours"):
        visitors.resumable_sweep(store, two[2], sweep)  # B cannot resume (and so write into) A's sweep
    assert visitors.delete(store, a, run_id=summary) == 4
    assert all(store.get_run(c) is None for c in cells) and store.get_sweep(sweep) is None


def test_private_mode_shows_the_cli_sessions_but_not_other_browsers(blank_url, monkeypatch):
    monkeypatch.delenv("CONTEXT_LAB_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    store = Store(blank_url)
    cli = store.new_session("from the CLI")
    _, a_session, a = session_for(store, None)
    _, b_session, b = session_for(store, None)
    assert {s["id"] for s in visitors.sessions(store, a)} == {cli, a_session}
    visitors.rename(store, a, cli, "renamed in the browser")
    monkeypatch.setenv("SPACE_ID", "someone/context-lab")
    assert {s["id"] for s in visitors.sessions(store, a)} == {a_session}


def test_a_damaged_sqlite_file_is_set_aside_and_never_written(tmp_path):
    path = tmp_path / "lab.sqlite"
    store = Store(f"sqlite:///{path}")
    session_id = store.new_session("before")
    for i in range(200):
        _log(store, session_id, f"prompt {i} " * 40)
    store.engine.dispose()
    with open(path, "r+b") as handle:  # overwrite pages in the middle of the file
        handle.seek(path.stat().st_size // 2)
        handle.write(b"\x13" * 8192)
    damaged = path.read_bytes()
    reopened = Store(f"sqlite:///{path}")
    assert reopened.set_aside is not None and reopened.set_aside.read_bytes() == damaged
    assert reopened.list_sessions() == [] and reopened.new_session("after")
    (tmp_path / "not-a-db.sqlite").write_bytes(b"this is not a database" * 100)
    assert Store(f"sqlite:///{tmp_path / 'not-a-db.sqlite'}").set_aside.name.startswith("not-a-db.sqlite.damaged-")
    assert Store(f"sqlite:///{path}").set_aside is None  # the new file is whole
