"""Headless Chromium on a real gunicorn server: a script that made it into a served model card (a data value the
card renderer failed to escape) does not run, because /model-card is served in a CSP sandbox; the same HTML without
the server's headers does run it (the control). The form page still works under its own CSP (no inline script)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.browser import chromium, require_chromium
from tests.support.bundles import add_card
from tests.support.network import free_port
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration

require_chromium()

from selenium.webdriver.common.by import By  # noqa: E402 - after the skip, so a machine without a browser skips
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# What an unescaped category value or column name would put in the card: an inline script, an event handler on an
# image that fails to load, and one on an SVG. Each marks the page where WebDriver can read it without script.
HOSTILE_CARD = """<!doctype html><html><head><title>card</title></head><body>
<h1 id="heading">Model card</h1>
<script>document.title = "pwned-script"; document.body.dataset.pwned = "script";</script>
<img src="x" onerror="document.title = 'pwned-img'; document.body.dataset.pwned = 'img'">
<svg onload="document.title = 'pwned-svg'; document.body.dataset.pwned = 'svg'"></svg>
<p style="color: #333">style kept</p>
</body></html>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def carded_server(store: Path, tmp_path: Path) -> Iterator[PredictionServer]:
    add_card(store / "1", HOSTILE_CARD)
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log") as running:
        yield running


def pwned(browser: WebDriver) -> str | None:
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-pwned")


def test_a_script_in_a_served_card_does_not_run(browser: WebDriver, carded_server: PredictionServer) -> None:
    # The control: the same HTML, opened without the server's headers, runs every one of its scripts' kinds.
    browser.get("data:text/html;base64," + base64.b64encode(HOSTILE_CARD.encode()).decode())
    WebDriverWait(browser, 10).until(lambda b: b.title.startswith("pwned"))
    assert pwned(browser) in ("script", "img", "svg")

    browser.get(f"{carded_server.url}/model-card")
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "heading").text == "Model card")
    browser.execute_script("return 1")  # lets any pending handler (the failed image) fire first
    assert browser.title == "card" and pwned(browser) is None
    assert browser.find_element(By.TAG_NAME, "p").value_of_css_property("color") == "rgba(51, 51, 51, 1)"


def test_the_form_page_works_under_its_policy(browser: WebDriver, carded_server: PredictionServer) -> None:
    browser.get(carded_server.url + "/")
    browser.find_element(By.ID, "submit").click()  # the default values are the contract's example row
    WebDriverWait(browser, 15).until(lambda b: b.find_element(By.ID, "result").text.strip())
    text = browser.find_element(By.ID, "result").text
    assert text.startswith("Prediction: "), text  # form.js ran and its fetch was allowed (connect-src 'self')
    # Styled by form.css: the result box's background.
    background = browser.find_element(By.ID, "result").value_of_css_property("background-color")
    assert background == "rgba(243, 243, 243, 1)", background
