"""Session export and import: a faithful round trip for every run kind, and hostile files rejected
with a sentence while nothing is written."""
import copy
import json

import pytest
from sqlalchemy import text

from storage.db import Store
from storage.transfer import MAX_BYTES, ImportRejected, export_session, import_session

KINDS = {
    "probe": ({"context": "c", "question": "q"}, {"text": "Paris", "tokens": [{"token_id": 5, "prob": 0.9}]}),
    "sweep_cell": ({"probe": {"task": "passkey", "length": 500, "depth": 0.0, "seed": 1, "haystack": None,
                              "params": {}}, "mode": "generate"}, {"row": {"key": "500:0:1", "correct": True}}),
    "sweep": ({"sweep": {"task": "passkey", "lengths": [500], "depths": [0.0], "seeds": [1]}},
              {"cells": [], "effective": {}}),
    "conflicts": ({"methods": [{"method": "greedy"}]}, {"rows": []}),
}


def filled_store(url: str) -> tuple[Store, str]:
    store = Store(url)
    session_id = store.new_session("round trip <b>bold</b>")
    grid = {"task": "passkey", "lengths": [500], "depths": [0.0], "seeds": [1], "params": {}}
    sweep_id = store.create_sweep(session_id, grid, {"model": {"model": "m"}})
    for kind, (inputs, outputs) in KINDS.items():
        store.log_run(session_id, kind, {"model": {"model": "m"}}, inputs, outputs, {"torch": "2.13"},
                      prompt=f"prompt of {kind} " * 50, task="passkey", score=0.5, correct=False, seconds=1.25,
                      sweep_id=sweep_id if kind.startswith("sweep") else None,
                      cell="500:0:1" if kind == "sweep_cell" else None)
    return store, session_id


def counts(store: Store) -> tuple[int, int, int, int]:
    with store.engine.connect() as conn:
        return tuple(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
                     for t in ("sessions", "runs", "sweeps", "contexts"))


def test_every_run_kind_survives_export_and_import(blank_url):
    store, session_id = filled_store(blank_url)
    exported = export_session(store, session_id)
    new_id = import_session(store, json.dumps(exported).encode())
    assert new_id != session_id and store.get_session(new_id)["name"] == "round trip <b>bold</b>"
    original = {r["kind"]: store.get_run(r["id"]) for r in store.list_runs(session_id)}
    imported = {r["kind"]: store.get_run(r["id"]) for r in store.list_runs(new_id)}
    assert set(imported) == set(KINDS)
    for kind in KINDS:
        a, b = original[kind], imported[kind]
        for field in ("kind", "model", "task", "score", "correct", "seconds", "config", "outputs", "environment",
                      "cell", "prompt", "prompt_hash"):
            assert a[field] == b[field], (kind, field)
        assert b["inputs"] == a["inputs"] | {"imported_from": a["id"]}
        assert (a["sweep_id"] is None) == (b["sweep_id"] is None)
        assert a["sweep_id"] is None or b["sweep_id"] != a["sweep_id"]  # imported under a new sweep id
    assert counts(store)[3] == 4  # the prompts were already stored: not stored twice
    assert export_session(store, new_id)["runs"][0]["outputs"] == exported["runs"][0]["outputs"]


def hostile_files(exported: dict) -> list[tuple[bytes, str]]:
    def changed(edit) -> bytes:
        data = copy.deepcopy(exported)
        edit(data)
        return json.dumps(data).encode()

    return [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[" * 10000 + b"]" * 10000, "nests deeper than 64"),
        (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nests deeper than 64"),
        (b" " * (MAX_BYTES + 1), "session files up to 64 MB"),
        (b'"just a string"', "not a Context Lab session file"),
        (changed(lambda d: d.update(version=99)), "version 99"),
        (changed(lambda d: d.pop("version")), "version None"),
        (changed(lambda d: d["session"].update(name="")), "non-empty 'name'"),
        (changed(lambda d: d.update(runs={})), "must be lists"),
        (changed(lambda d: d["runs"][0].pop("kind")), "missing the field 'kind'"),
        (changed(lambda d: d["runs"][1].update(score="high")), "'score' must be int or float or null, not str"),
        (changed(lambda d: d["runs"][1].update(correct=1)), "'correct' must be bool or null"),
        (changed(lambda d: d["runs"][0].update(config=[])), "'config' must be dict"),
        (changed(lambda d: d["runs"][0].update(created_at="yesterday")), "not an ISO date"),
        (changed(lambda d: d["runs"][0].update(kind="k" * 500)), "longer than 400"),
        (changed(lambda d: d["runs"][0].update(sweep_id="elsewhere")), "refers to a sweep"),
        (changed(lambda d: d["runs"][0].update(prompt_hash="0" * 64)), "refers to a prompt"),
        (changed(lambda d: d["contexts"].update({next(iter(d["contexts"])): "tampered"})), "does not match its hash"),
        (changed(lambda d: d["sweeps"][0].update(spec="x")), "'spec' must be dict"),
        (changed(lambda d: d["runs"].append(d["runs"][-1] | {"id": "x", "outputs": None})), "'outputs' must be dict"),
        (changed(lambda d: d["runs"].append(next(r for r in d["runs"] if r["cell"]) | {"id": "twin"})),
         "repeats the cell 500:0:1"),
        (changed(lambda d: d["sweeps"].append(d["sweeps"][0])), "same id"),
        (changed(lambda d: d["sweeps"][0]["spec"].update(lengths=[])), "non-empty lists of lengths"),
        (changed(lambda d: next(r for r in d["runs"] if r["kind"] == "sweep")["inputs"].pop("sweep")),
         "sweep without its grid"),
        (changed(lambda d: d["runs"][0].update(kind="<script>")), "of kind '<script>', which this lab does not know"),
        (changed(lambda d: d["runs"][0]["config"].update(rope={"kind": "warp"})), "Unknown RoPE kind 'warp'"),
    ]


def test_hostile_imports_are_rejected_and_write_nothing(blank_url):
    store, session_id = filled_store(blank_url)
    exported = export_session(store, session_id)
    before = counts(store)
    for raw, words in hostile_files(exported):
        with pytest.raises(ImportRejected, match=words):
            import_session(store, raw)
        assert counts(store) == before, words


def test_export_of_an_unknown_session_is_explained(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.sqlite'}")
    with pytest.raises(Exception, match="No session with id 'nope'"):
        export_session(store, "nope")
