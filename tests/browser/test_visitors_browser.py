"""Two browsers on the lab in public mode (real Chromium): each keeps one visitor and one session
across reloads, neither page carries the other's ids or names, deep links open only what is yours
or published, and markup in names and messages stays text."""
import json
import os

import pytest

from storage.db import Store
from tests.browser.test_browser import ARTIFACTS, browser  # noqa: F401 (the shared Chromium fixture)
from tests.conftest import serving

pytestmark = [pytest.mark.browser, pytest.mark.model]
HOSTILE = '<img src=x onerror="window.__owned=1"><b>bold</b>'


@pytest.fixture(scope="module")
def public_app(tmp_path_factory):
    """The lab served in-process in public mode; yields (url, store)."""
    saved = os.environ.get("CONTEXT_LAB_PUBLIC")
    os.environ["CONTEXT_LAB_PUBLIC"] = "1"
    try:
        with serving(Store(f"sqlite:///{tmp_path_factory.mktemp('public') / 'lab.sqlite'}")) as served:
            yield served
    finally:
        if saved is None:
            os.environ.pop("CONTEXT_LAB_PUBLIC")
        else:
            os.environ["CONTEXT_LAB_PUBLIC"] = saved


@pytest.fixture()
def two_pages(browser, request):  # noqa: F811
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
    pages = [context.new_page() for context in contexts]
    for page in pages:
        page.set_default_timeout(120_000)
    yield pages
    if getattr(request.node, "outcome_failed", False):
        ARTIFACTS.mkdir(exist_ok=True)
        for name, page in zip("ab", pages, strict=True):
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{name}.png"), full_page=True)
    for context in contexts:
        context.close()


def probe(page):
    page.get_by_role("tab", name="Probe").click()
    page.locator("#probe-run").click()
    page.locator("#probe-stats").get_by_text("finish", exact=True).wait_for()


def page_data(page) -> str:
    """Everything the page carries: its HTML and the config gradio rendered it from, less the page's own
    address (which the visitor typed, and which plots repeat in their clip paths)."""
    text = page.content() + json.dumps(page.evaluate("window.gradio_config"))
    address = page.url.split("#")[0]
    query = address[address.index("?"):] if "?" in address else ""
    return text.replace(address, "").replace(query, "") if query else text


def test_two_browsers_are_two_visitors(two_pages, public_app):
    url, store = public_app
    a, b = two_pages
    a.goto(url)
    probe(a)
    a.reload()
    probe(a)  # after a reload: the same visitor, the same session
    sessions = [s for s in store.list_sessions() if s["runs"]]
    assert len(sessions) == 1 and sessions[0]["runs"] == 2
    session_id, run_id = sessions[0]["id"], store.list_runs(sessions[0]["id"])[0]["id"]
    store.rename_session(session_id, HOSTILE)

    b.goto(url)
    b.get_by_role("tab", name="Sessions").click()
    assert session_id not in page_data(b) and run_id not in page_data(b) and "bold" not in page_data(b)
    b.goto(f"{url}?run={run_id}")
    b.goto(f"{url}?session={session_id}")
    b.wait_for_timeout(1500)
    assert run_id not in page_data(b) and session_id not in page_data(b)

    a.goto(f"{url}?session={session_id}")
    a.get_by_text(run_id).first.wait_for(state="attached")  # the run table lists A's run
    assert a.evaluate("window.__owned") is None and a.locator("img[src='x']").count() == 0
    a.locator("#sessions-run-id textarea, #sessions-run-id input").first.fill(run_id)
    a.locator("#sessions-share").click()
    a.wait_for_function("document.querySelector('#sessions-share-link textarea, #sessions-share-link input')"
                        ".value.includes('?share=')")
    link = a.locator("#sessions-share-link textarea, #sessions-share-link input").first.input_value()
    token = link.split("?share=")[1]

    b.goto(f"{url}?share={token}")
    b.locator("#sessions-run-table").get_by_text(run_id, exact=True).wait_for()  # published: B reads it
    b.locator("#sessions-delete-run").click()
    b.get_by_text("No session of yours").first.wait_for()  # and cannot change it
    assert store.get_run(run_id) is not None

    b.locator("#sessions-run-id textarea, #sessions-run-id input").first.fill(HOSTILE)
    b.locator("#sessions-open").click()
    b.get_by_text("No run with id '<img src=x").first.wait_for()  # the markup shows as characters
    assert b.evaluate("window.__owned") is None and b.locator("img[src='x']").count() == 0
    assert b.locator(".toast-body b, [data-testid='toast-body'] b").count() == 0
