"""Shared fixtures: a private data directory per test, and the real embedded model once per run; and the
one-layer Llama written out by hand that attention references start from."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    """Every test logs into its own SQLite file; the model cache (CONTEXT_LAB_HOME) is shared."""
    monkeypatch.setenv("CONTEXT_LAB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("CONTEXT_LAB_DATABASE_URL", raising=False)
    monkeypatch.delenv("CONTEXT_LAB_LOGGING", raising=False)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2 model in the auto dtype, loaded through the lab's own manager."""
    from engines.config.specs import ModelSpec
    from engines.model.loading import MANAGER

    return MANAGER.get(ModelSpec())


@contextmanager
def serving(store):
    """The lab's UI served in-process on a free 127.0.0.1 port, logging to `store` (None: no run
    log); yields (url, store)."""
    import socket

    from app import build_ui, launch

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    demo = build_ui(store)
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", store
    finally:
        demo.close()


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """The lab served in private mode (as on a person's own machine). Yields (url, store)."""
    from storage.db import Store

    with serving(Store(f"sqlite:///{tmp_path_factory.mktemp('served') / 'lab.sqlite'}")) as served:
        yield served


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's own tokenizer (fetches and converts the model on first use)."""
    from transformers import AutoTokenizer

    from engines.model.loading import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_url(request, tmp_path):
    """A database URL with nothing in it: a new SQLite file, or the PostgreSQL server that .ci/run starts
    (CONTEXT_LAB_TEST_POSTGRES_URL), emptied first."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lab.sqlite'}"
    return empty_postgres()


def empty_postgres() -> str:
    """The URL of the test PostgreSQL database, emptied (skips the test where there is none, fails in CI)."""
    import os

    from sqlalchemy import create_engine, text

    url = os.environ.get("CONTEXT_LAB_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must test PostgreSQL: .ci/run sets CONTEXT_LAB_TEST_POSTGRES_URL")
        pytest.skip("set CONTEXT_LAB_TEST_POSTGRES_URL to test PostgreSQL (.ci/run does)")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Marks a failed test so the browser tests' page fixture keeps a screenshot."""
    report = (yield).get_result()
    if report.when == "call" and report.failed:
        item.outcome_failed = True


def one_layer_inputs(model, ids, heads: int = 4, kv_heads: int = 2, dim: int = 8):
    """A one-layer Llama's attention inputs by hand: the embeddings, the normed input, and q, k, v before
    RoPE ([1, heads, L, dim], key and value heads repeated)."""
    layer, attention = model.model.layers[0], model.model.layers[0].self_attn
    hidden = model.model.embed_tokens(ids)
    x = layer.input_layernorm(hidden)
    q = attention.q_proj(x).view(1, -1, heads, dim).transpose(1, 2)
    repeat = heads // kv_heads
    k = attention.k_proj(x).view(1, -1, kv_heads, dim).transpose(1, 2).repeat_interleave(repeat, dim=1)
    v = attention.v_proj(x).view(1, -1, kv_heads, dim).transpose(1, 2).repeat_interleave(repeat, dim=1)
    return hidden, x, q, k, v


def one_layer_logits(model, hidden, rows):
    """The rest of that one layer, from its attention output per position (each [heads, dim]) to logits."""
    layer = model.model.layers[0]
    hidden = hidden + layer.self_attn.o_proj(torch.stack(rows, 1).transpose(0, 1).reshape(1, len(rows), -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(model.model.norm(hidden))
