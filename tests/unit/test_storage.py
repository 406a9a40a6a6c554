"""The run log on a real SQLite file: migrations, schema, round trips, concurrency."""
import threading

import pytest
from sqlalchemy import inspect, text

from storage.db import MIGRATIONS, Base, Store, database_url


def test_database_lives_in_the_data_directory(private_data_dir):
    assert database_url() == f"sqlite:///{private_data_dir / 'lab.sqlite'}"
    store = Store()
    store.new_session("x")
    assert (private_data_dir / "lab.sqlite").exists()


def test_blank_database_gets_every_migration_once(blank_url):
    store = Store(blank_url)
    assert store.schema_version() == MIGRATIONS[-1][0]
    assert Store(store.url).migrate() == []  # a second open applies nothing


def test_migrated_schema_is_the_mapped_schema(blank_url):
    store = Store(blank_url)
    inspector = inspect(store.engine)
    for table in Base.metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.columns.keys()), table.name
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("runs")}
    assert {("session_id",), ("kind",), ("created_at",), ("model",), ("task",)} <= indexed


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.sqlite'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def _log(store, session_id, prompt="a long prompt", answer="Paris"):
    return store.log_run(session_id, "probe", {"model": {"model": "m"}}, {"question": "q"},
                         {"text": answer}, {"torch": "x"}, prompt=prompt, score=1.0, correct=True,
                         seconds=0.5)


def test_run_round_trip_and_prompt_stored_once(blank_url):
    store = Store(blank_url)
    session_id = store.new_session("mine")
    first, second = _log(store, session_id), _log(store, session_id, answer="Lyon")
    run = store.get_run(first)
    assert run["prompt"] == "a long prompt" and run["outputs"] == {"text": "Paris"}
    assert run["correct"] is True and run["model"] == "m" and run["session_id"] == session_id
    assert store.get_run(second)["prompt_hash"] == run["prompt_hash"]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM contexts")).scalar() == 1
    assert [r["id"] for r in store.list_runs(session_id)] in ([second, first], [first, second])
    assert store.get_run("nope") is None


def test_two_threads_writing_at_once_lose_nothing(blank_url):
    store = Store(blank_url)
    session_id = store.new_session()
    errors = []

    def write(tag):
        try:
            for i in range(25):
                _log(store, session_id, prompt=f"{tag}-{i % 5}", answer=f"{tag}{i}")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    answers = {r["outputs"]["text"] for r in store.list_runs(session_id)}
    assert answers == {f"{tag}{i}" for tag in "ab" for i in range(25)}


def test_unknown_session_is_created_rather_than_losing_the_run(blank_url):
    store = Store(blank_url)
    run_id = _log(store, "not-made-yet")
    assert store.get_run(run_id)["session_id"] == "not-made-yet"


def test_foreign_keys_are_enforced(blank_url):
    store = Store(blank_url)
    with pytest.raises(Exception, match="(?i)foreign key"):
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO runs (id, session_id, kind, created_at, model, config, inputs, "
                              "outputs, environment) VALUES ('r', 'missing', 'probe', '2026-01-01', 'm', "
                              "'{}', '{}', '{}', '{}')"))


def test_older_database_is_migrated_and_keeps_its_runs(tmp_path):
    """tests/data/lab-v1.sqlite was written by schema version 1 (sessions, contexts, runs)."""
    import shutil

    from conftest import ROOT

    copy = tmp_path / "old.sqlite"
    shutil.copy(ROOT / "tests" / "data" / "lab-v1.sqlite", copy)
    store = Store(f"sqlite:///{copy}")
    assert store.schema_version() == MIGRATIONS[-1][0] >= 2
    run = store.get_run("r1")
    assert run["outputs"] == {"text": "Paris"} and run["prompt"] == "an old prompt" and run["sweep_id"] is None
    sweep_id = store.create_sweep("s1", {"task": "passkey"}, {"model": {}})
    new = store.log_run("s1", "sweep_cell", {"model": {"model": "m"}}, {}, {}, {}, sweep_id=sweep_id, cell="1:0:1")
    assert store.get_run(new)["cell"] == "1:0:1"


def test_a_sweep_cell_is_stored_once(blank_url):
    store = Store(blank_url)
    session_id = store.new_session()
    sweep_id = store.create_sweep(session_id, {"task": "passkey"}, {"model": {}})
    store.log_run(session_id, "sweep_cell", {"model": {}}, {}, {}, {}, sweep_id=sweep_id, cell="1000:0:1")
    with pytest.raises(Exception, match="(?i)unique"):
        store.log_run(session_id, "sweep_cell", {"model": {}}, {}, {}, {}, sweep_id=sweep_id, cell="1000:0:1")
    assert len(store.sweep_cells(sweep_id)) == 1
