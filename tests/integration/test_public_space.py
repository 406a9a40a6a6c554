"""The lab served as a public Space (`python app.py` with SPACE_ID set, as a Space sets it, in its own process
under an address-space limit), probed by two gradio_client clients: isolation on every endpoint,
explicit sharing, every cap refused on its count with the server's memory flat, the queue limit,
and messages that stay text."""
from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import Status

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 6 * 2**30  # the served lab peaks near 2.5 GB of address space after loading the model
PRESET_HAYSTACK = "preset"
FREE_TEXT = "(free text: the context and question above)"
CONFIG = ["smollm2-135m-instruct", "none", "nf4", "auto", True, 4, "default", "causal", "greedy"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """(url, pid) of a public-mode lab; the run log is its own SQLite file."""
    port, data = _free_port(), tmp_path_factory.mktemp("space")
    env = os.environ | {"SPACE_ID": "context-lab/test-space", "CONTEXT_LAB_DATA": str(data), "GRADIO_SERVER_PORT": str(port),
                        "CONTEXT_LAB_MAX_QUEUED_JOBS": "2", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("CONTEXT_LAB_DATABASE_URL", None)
    env.pop("CONTEXT_LAB_PUBLIC", None)  # SPACE_ID alone makes it public
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, preexec_fn=_limited,
                              stdout=open(data / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("the public lab did not start: " + (data / "server.log").read_text()[-2000:])
    try:
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(30)


def _rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


def _probe(client: Client, context="The capital of France is Paris.", config=CONFIG):
    return client.predict(context, "What is the capital of France?", False, *config, api_name="/probe")


def test_two_clients_see_only_their_own_and_share_explicitly(space):
    url, _ = space
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    run_id = _probe(a)[1]["run_id"]
    a_sessions = a.predict(api_name="/list_sessions")["choices"]
    assert len(a_sessions) == 2 and run_id in json.dumps(a.predict(*[""] * 1, "all", "", "", "", "", False,
                                                                   api_name="/list_runs"))
    _probe(a)  # a second run goes to the same session: one session per visitor
    session_id = a.predict(api_name="/list_sessions")["choices"][1][1]
    assert len(a.predict(api_name="/list_sessions")["choices"]) == 2
    assert b.predict(api_name="/list_sessions")["choices"] == [["all my sessions", ""]]
    assert b.predict("", "all", "", "", "", "", False, api_name="/list_runs")["data"] == []
    for endpoint, args in [("open_run", (run_id,)), ("replay", (run_id,)), ("delete_run", (run_id,)),
                           ("export_session", (session_id,)), ("rename_session", (session_id, "taken")),
                           ("delete_session", (session_id,)), ("share", ("this run", "", run_id)),
                           ("list_runs", (session_id, "all", "", "", "", "", False))]:
        with pytest.raises(Exception, match="No (run|session)"):
            b.predict(*args, api_name=f"/{endpoint}")
    assert a.predict(run_id, api_name="/open_run")[0]["id"] == run_id  # nothing of A's was changed

    link = a.predict("this run", "", run_id, api_name="/share")
    assert "?share=" in link and len(link.split("?share=")[1]) >= 32
    assert b.predict(run_id, api_name="/open_run")[0]["id"] == run_id  # published: readable
    with pytest.raises(Exception, match="No session of yours"):
        b.predict(run_id, api_name="/delete_run")  # and still not B's to change
    a.predict(session_id, "<b>bold</b> <img src=x>", api_name="/rename_session")
    exported = a.predict(session_id, api_name="/export_session")
    imported = b.predict(handle_file(exported), api_name="/import_session")
    assert "Imported as session" in imported[1]
    names = [c[0] for c in b.predict(api_name="/list_sessions")["choices"]]
    assert any(n.startswith("<b>bold</b> <img src=x>") for n in names)  # a copy of B's own, named as text
    assert a.predict(session_id, api_name="/delete_session")[1].startswith("The session was deleted")
    with pytest.raises(Exception, match="No run"):
        b.predict(run_id, api_name="/open_run")  # deleted with its session, share and all


def test_every_cap_is_refused_on_its_count_with_memory_flat(space):
    url, pid = space
    client = Client(url, verbose=False)
    _probe(client)  # warm: the model is loaded and the first request's allocations are made
    before = _rss_mb(pid)
    long_text = "The grass is green. " * 1500

    def sweep(endpoint, lengths="1000", depth_count=5, seeds="1"):
        grid = ["passkey", lengths, depth_count, "linear", seeds, "generate", PRESET_HAYSTACK, "{}", False, None,
                False, "", "none", "auto", True, ""] + ([0, "this process"] if endpoint == "sweep_run" else [])
        return client.predict(*grid, *CONFIG, api_name=f"/{endpoint}")

    absurd = [
        (lambda: _probe(client, long_text), "tokens; .* allow at most 4,096"),
        (lambda: _probe(client, "x" * 5_000_000), "characters; .* at most 4,096 tokens"),
        (lambda: _probe(client, config=CONFIG[:5] + [100_000] + CONFIG[6:]), "Max new tokens"),
        (lambda: _probe(client, config=CONFIG[:5] + [300] + CONFIG[6:]), "at most 256 new tokens here"),
        (lambda: _probe(client, config=CONFIG[:8] + ["beam:num_beams=32"]), "at most 4 here"),
        (lambda: _probe(client, config=CONFIG[:8] + ["icn:answers=20,answer_tokens=64"]), "20 x 64 tokens"),
        (lambda: client.predict("passkey", 1000, 50, 1, PRESET_HAYSTACK, "[" * 100_000 + "]" * 100_000, None,
                                *CONFIG, api_name="/haystack_build"), "small JSON object"),
        (lambda: _probe(client, config=["someone/big-model"] + CONFIG[1:]), "This Space serves only"),
        (lambda: _probe(client, config=["/etc"] + CONFIG[1:]), "This Space serves only"),
        (lambda: sweep("sweep_estimate", depth_count=10**9), "1000000000 depths is more than .*60 cells"),
        (lambda: sweep("sweep_run", lengths=",".join(["1000"] * 10**6)), "1000000 values is more than"),
        (lambda: sweep("sweep_run", depth_count=11, seeds="1,2,3,4,5,6,7,8,9,10"), "110 cells"),
        (lambda: client.predict(1, 512, *CONFIG, api_name="/sift_benchmark"), "budget per call is 512; .* at most 256"),
        (lambda: client.predict(10, 192, *CONFIG, api_name="/sift_benchmark"), "up to 110 model calls"),
        (lambda: client.predict("passkey", 10**9, 50, 1, PRESET_HAYSTACK, "{}", None, "generate", False, *CONFIG,
                                api_name="/haystack_run"), "at most 4096|choose a smaller length"),
        (lambda: client.predict(*CONFIG, api_name="/load_model"), "nobody switches the loaded model"),
        (lambda: client.predict(*CONFIG, api_name="/gallery_beyond_the_window"), "at most 4096|choose a smaller length"),
        (lambda: client.predict(*CONFIG, api_name="/gallery_lm_infinite"), "16,000 tokens; .* at most 4,096"),
        (lambda: client.predict(long_text, "q", FREE_TEXT, 1000, 50, 1, "greedy", *CONFIG, api_name="/decode_compare"),
         "at most 4,096"),
        (lambda: client.predict("c", "q", FREE_TEXT, 1000, 50, 1, "greedy\nbeam:num_beams=16", *CONFIG,
                                api_name="/decode_compare"), "at most 4 here"),
        (lambda: client.predict(long_text, "q", 192, False, *CONFIG, api_name="/sift"), "at most 4,096"),
        (lambda: client.predict(10**9, *CONFIG, api_name="/context_nll"), "between 64 and 4096"),
    ]
    for attempt, words in absurd:
        with pytest.raises(Exception, match=words):
            attempt()
    grown = _rss_mb(pid) - before
    assert grown < 300, f"the server grew by {grown:.0f} MB while refusing"
    assert "Paris" in _probe(client)[0] or _probe(client)[1]["new_tokens"] == 4  # and it still serves


def test_a_visitor_cannot_fill_the_queue(space):
    url, _ = space
    client, other = Client(url, verbose=False), Client(url, verbose=False)
    slow = CONFIG[:5] + [200] + CONFIG[6:]
    jobs = [client.submit("The grass is green. " * 150, "Say something long.", False, *slow, api_name="/probe")
            for _ in range(2)]
    for job in jobs:  # both are in the queue (or running) before the third is asked for
        while job.status().code in (Status.STARTING, Status.JOINING_QUEUE):
            time.sleep(0.1)
    with pytest.raises(Exception, match="already have 2 jobs waiting or running"):
        client.predict("ctx", "q", False, *CONFIG, api_name="/probe")
    assert other.predict("ctx", "q", False, *CONFIG, api_name="/probe")[1]["new_tokens"] >= 1  # others still run
    for job in jobs:
        job.result()
    assert client.predict("ctx", "q", False, *CONFIG, api_name="/probe")[1]["new_tokens"] >= 1  # and then it may
