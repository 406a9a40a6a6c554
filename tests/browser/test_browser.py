"""The lab in real Chromium (Debian's, driven by Playwright): a passkey probe, a sweep filling its
heatmap, a session opened by link and replayed, and user text that must stay text.

A failing test leaves a screenshot in test-artifacts/.
"""
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.model]

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: .ci/run installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(120_000)
    yield opened
    outcome = getattr(request.node, "outcome_failed", False)
    if outcome:
        ARTIFACTS.mkdir(exist_ok=True)
        opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def open_tab(page, url, name):
    page.goto(url)
    page.get_by_role("tab", name=name).click()


def test_passkey_probe_in_the_haystack_tab(page, served_app):
    url, store = served_app
    open_tab(page, url, "Haystack")
    page.get_by_label("Target length (prompt tokens)").fill("1000")
    page.locator("#haystack-run").click()
    page.locator("#haystack-verdict").get_by_text("found").wait_for()
    run = store.list_runs(kind="probe")[0]
    assert run["task"] == "passkey" and run["correct"] is True
    assert page.get_by_text(run["outputs"]["expected"][0]).count() >= 1
    assert page.locator(".js-plotly-plot").count() >= 1  # the needle strip


def test_sweep_heatmap_fills_in(page, served_app):
    url, _ = served_app
    open_tab(page, url, "Sweep")
    page.get_by_label("Lengths (prompt tokens)").fill("400,800")
    page.get_by_label("Depths (count, 0-100%)").fill("2")
    page.locator("#sweep-run").click()
    page.get_by_text("4/4 cells").wait_for()
    heatmap = page.locator("#sweep-heatmap .js-plotly-plot")
    heatmap.wait_for()
    assert heatmap.locator("rect, path").count() > 0


def test_session_opened_by_link_and_replayed(page, served_app):
    url, store = served_app
    session_id = store.new_session("linked")
    from engines.config.specs import RunConfig
    from engines.decoding.generation import format_prompt, generate
    from engines.model.loading import MANAGER
    from services.run_log import log_generation

    loaded = MANAGER.get(RunConfig().model)
    prompt = format_prompt(loaded.tokenizer, "The capital of France is Paris.", "What is the capital of France?")
    run_id = log_generation(store, session_id, "probe", RunConfig(), loaded,
                            {"context": "The capital of France is Paris.",
                             "question": "What is the capital of France?"}, generate(loaded, prompt, 32))
    page.goto(f"{url}?run={run_id}")
    page.locator("#sessions-run-table").get_by_text(run_id, exact=True).wait_for()
    page.locator("#sessions-replay").click()
    page.locator("#sessions-replay-badge .verdict-badge").get_by_text("identical").wait_for()


def test_user_text_is_shown_as_text(page, served_app):
    url, _ = served_app
    hostile = '<img src=x onerror="window.__owned=1"><script>window.__owned=2</script>'
    open_tab(page, url, "Probe")
    page.locator("#probe-context textarea").fill(hostile + " The capital of France is Paris.")
    page.locator("#probe-run").click()
    page.locator("#probe-stats").get_by_text("finish", exact=True).wait_for()
    page.get_by_text("Prompt: the exact text fed to the model").click()
    shown = page.locator("#probe-prompt textarea").input_value()
    assert hostile in shown  # the markup is there, as characters
    assert page.evaluate("window.__owned") is None  # and none of it ran
    assert page.locator("img[src='x']").count() == 0


def test_decoding_methods_side_by_side(page, served_app):
    url, store = served_app
    hostile = '<img src=x onerror="window.__owned=1">'
    open_tab(page, url, "Decoding")
    page.locator("#decode-context textarea").fill(hostile + " After the 2031 referendum the capital of France moved to Lyon.")
    page.locator("#decode-methods textarea").fill("greedy\ncad:alpha=1")
    page.locator("#decode-run").click()
    page.wait_for_function("document.querySelector('#decode-results').innerText.includes('cad:alpha=1') && "
                           "!document.querySelector('#decode-results').innerText.includes('generating') && "
                           "!document.querySelector('#decode-results').innerText.includes('waiting')")
    logged = [r for r in store.list_runs(kind="probe") if r["config"]["decoding"]["method"] == "cad"]
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")  # tokens, alpha per step
    assert logged
    assert page.evaluate("window.__owned") is None and page.locator("img[src='x']").count() == 0


def test_sift_stage_timeline(page, served_app):
    url, _ = served_app
    open_tab(page, url, "SIFT")
    page.locator("#sift-budget input[type=number]").fill("64")
    page.locator("#sift-budget input[type=number]").press("Enter")
    page.locator("#sift-run").click()
    page.wait_for_function("document.querySelector('#sift-answer textarea').value.includes('resolved at:')",
                           timeout=300_000)
    assert page.locator(".js-plotly-plot").count() >= 1  # the stage timeline
    page.locator("#sift-stage input").click()
    page.get_by_role("option").first.click()
    page.wait_for_function("document.querySelector('#sift-stage-output textarea').value.length > 0")


def test_attention_explorer_full_map_and_head_masking(page, served_app):
    url, store = served_app
    open_tab(page, url, "Haystack")
    page.get_by_label("Target length (prompt tokens)").fill("600")
    page.locator("#haystack-capture input").check()
    page.locator("#haystack-run").click()
    page.locator("#haystack-verdict").get_by_text("found").wait_for()
    page.get_by_text("Explore the captured attention").last.click()
    for element, value in (("#haystack-layer", "3"), ("#haystack-head", "1")):
        page.locator(f"{element} input").click()
        page.locator(element).get_by_role("option", name=value, exact=True).click()
    page.get_by_text("layer 3, head 1, mean").wait_for()  # the title, wrapped to fit
    page.locator("#haystack-log input").check()
    page.locator("#haystack-full-map").click()
    page.get_by_text("Layer 3, head 1: query x key").wait_for()
    page.get_by_text("Retrieval score per head (copy-paste rule)").wait_for()
    page.get_by_text("Head masking: does the answer need the retrieval heads?").click()
    page.locator("#haystack-mask-run").click()
    page.get_by_text("random heads masked (seed 0)").first.wait_for(state="attached")
    for _ in range(60):  # the rows show as they finish; the run is logged after the last
        if store.list_runs(kind="head_masking"):
            break
        page.wait_for_timeout(500)
    masking = store.list_runs(kind="head_masking")[0]["outputs"]["rows"]
    assert [r["setting"].split()[0] for r in masking] == ["no", "top", "10"]
    assert masking[1]["gold_logprob"] < masking[0]["gold_logprob"]
