"""The lab as a first-time visitor sees it in real Chromium, at desktop (1440 px) and phone (390 px)
width: the gallery as the landing tab, every tab screenshot and free of sideways scrolling, the
verdict badge and marked prompt of a haystack run, and a heatmap cell opened by clicking it.

Screenshots go to test-artifacts/screens/ (TAB-WIDTH.png)."""
import pytest

from services.gallery import cards
from tests.browser.test_browser import ARTIFACTS, browser, open_tab, page  # noqa: F401 (shared fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.model]
TABS = ["Start here", "Probe", "Haystack", "Sweep", "Benchmark", "Context", "Decoding", "SIFT", "Sessions"]
SCREENS = ARTIFACTS / "screens"


@pytest.fixture(params=[1440, 390])
def sized_page(browser, request):  # noqa: F811
    context = browser.new_context(viewport={"width": request.param, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(120_000)
    yield opened, request.param
    if getattr(request.node, "outcome_failed", False):
        ARTIFACTS.mkdir(exist_ok=True)
        opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def test_every_tab_at_desktop_and_phone_width(sized_page, served_app):
    page, width = sized_page  # noqa: F811
    url, _ = served_app
    page.goto(url)
    cards_shown = page.locator(".gallery-card")
    cards_shown.first.wait_for()
    assert page.get_by_role("tab", name="Start here", selected=True).count() == 1  # the landing tab
    assert cards_shown.count() == len(cards())
    page.locator(".gallery-card .js-plotly-plot").nth(len(cards()) - 1).wait_for()  # stored figures, drawn at once
    assert page.get_by_text("The claim:").count() == len(cards())
    assert page.locator("#model-panel").get_by_text("Model and run configuration: smollm2-135m-instruct").first.is_visible()
    assert not page.get_by_text("Quantization (bitsandbytes)").is_visible()  # the panel is closed to its one line
    SCREENS.mkdir(parents=True, exist_ok=True)
    for name in TABS:
        tab = page.get_by_role("tab", name=name)
        if tab.is_visible():
            tab.click()
        else:  # on a phone, gradio folds the tabs that do not fit into a menu
            page.locator(".overflow-menu button").first.click()
            page.locator(".overflow-dropdown button").get_by_text(name, exact=True).click()
        page.wait_for_timeout(300)
        page.screenshot(path=str(SCREENS / f"{name.replace(' ', '-').lower()}-{width}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 2, f"the {name} tab scrolls sideways by {overflow} px at {width} px"


def test_haystack_run_shows_a_badge_and_the_marked_prompt(page, served_app):  # noqa: F811
    url, _ = served_app
    open_tab(page, url, "Haystack")
    page.get_by_label("Target length (prompt tokens)").fill("600")
    page.locator("#haystack-run").click()
    badge = page.locator("#haystack-verdict .verdict-badge")
    badge.wait_for()
    assert badge.inner_text().lower() == "found"
    needle = page.locator("#haystack-prompt-view span[title^='needle']")
    assert needle.count() >= 1 and "pass key is" in needle.first.inner_text()
    assert page.locator("#haystack-table").get_by_text("prompt tokens").count() == 1


def test_a_heatmap_cell_opens_on_click(page, served_app):  # noqa: F811
    url, _ = served_app
    open_tab(page, url, "Sweep")
    page.get_by_label("Lengths (prompt tokens)").fill("400,800")
    page.get_by_label("Depths (count, 0-100%)").fill("2")
    page.locator("#sweep-run").click()
    page.get_by_text("4/4 cells").wait_for()
    page.wait_for_timeout(1500)  # the click hook is attached within a second of the plot's drawing
    cell = page.locator("#sweep-heatmap .heatmaplayer, #sweep-heatmap .nsewdrag").last
    box = cell.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.25)  # depth 100, top row
    table = page.locator("#sweep-cell-table")
    table.get_by_text("run id").wait_for()
    assert table.get_by_text("100", exact=True).count() >= 1
