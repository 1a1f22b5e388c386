"""The form at GET / in a real headless Chromium against a real gunicorn server (with its CSP): after a prediction
it shows the prediction's explanation as a bar chart, a bar per input column, and the bars are /explain's answer."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.browser import chromium, require_chromium
from tests.support.bundles import FEATURES
from tests.support.network import free_port
from tests.support.pointers import point
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration

require_chromium()

from selenium.webdriver.common.by import By  # noqa: E402 - after the skip, so a machine without a browser skips
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TIMEOUT = 30  # seconds for the page's two fetches; generous for 2 loaded cores
INPUTS = [f.name for f in FEATURES]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def explained(server: PredictionServer, record: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"{server.url}/explain", json.dumps({"dataframe_records": [record]}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def predict_in_the_form(browser: WebDriver, server: PredictionServer) -> str:
    """Open the form, submit its default values (the contract's example row), and return the result text."""
    browser.get(server.url)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, TIMEOUT).until(lambda b: b.find_element(By.ID, "result").text.strip())
    return browser.find_element(By.ID, "result").text


def the_chart(browser: WebDriver) -> list[Any]:
    """The chart's bars once it is shown."""
    WebDriverWait(browser, TIMEOUT).until(lambda b: b.find_element(By.ID, "explanation").is_displayed())
    return browser.find_elements(By.CSS_SELECTOR, "#explanation-chart g.bar")


def form_row(browser: WebDriver) -> dict[str, Any]:
    """The record the form sent: its fields' values as the page's script reads them."""
    record: dict[str, Any] = {}
    for field in browser.find_elements(By.CSS_SELECTOR, "#predict-form [name]"):
        name = field.get_attribute("name")
        if field.tag_name == "select":
            record[name] = json.loads(browser.execute_script(
                "return arguments[0].selectedOptions[0].dataset.json", field))
        else:
            value = field.get_attribute("value")
            record[name] = None if value == "" else json.loads(value)  # a number input's text: 3 or 0.5
    return record


def test_the_form_shows_the_explanation_as_a_bar_chart(browser: WebDriver, server: PredictionServer) -> None:
    text = predict_in_the_form(browser, server)
    assert text.startswith("Prediction: "), text
    prediction = float(text.splitlines()[0].removeprefix("Prediction: "))
    bars = the_chart(browser)
    expected = explained(server, form_row(browser))["explanations"][0]
    # one bar per input column, drawn from /explain's answer, largest first
    columns = [bar.get_attribute("data-column") for bar in bars]
    assert sorted(columns) == sorted(INPUTS)
    values = {bar.get_attribute("data-column"): float(bar.get_attribute("data-value")) for bar in bars}
    assert values == pytest.approx(expected["contributions"], rel=1e-9, abs=1e-12)
    assert [abs(values[c]) for c in columns] == sorted((abs(v) for v in values.values()), reverse=True)
    chart = browser.find_element(By.ID, "explanation-chart")
    assert float(chart.get_attribute("data-base")) == pytest.approx(expected["base_value"])
    assert float(chart.get_attribute("data-total")) == pytest.approx(prediction, rel=1e-6)
    # drawn, not only built: each bar's rectangle has a rendered size, longest for the largest contribution, on
    # the side of the zero line its sign says, with its column's name beside it
    zero = browser.find_element(By.CSS_SELECTOR, "#explanation-chart line.zero").rect["x"]
    widths = {}
    for bar in bars:
        rect = bar.find_element(By.TAG_NAME, "rect").rect
        column, value = bar.get_attribute("data-column"), values[bar.get_attribute("data-column")]
        assert rect["height"] > 5 and rect["width"] >= 0.5, (column, rect)
        assert (rect["x"] + rect["width"] <= zero + 1) if value < 0 else (rect["x"] >= zero - 1), (column, rect, zero)
        assert ("negative" if value < 0 else "positive") in bar.get_attribute("class")
        assert bar.find_element(By.CSS_SELECTOR, "text.label").text == column
        widths[column] = rect["width"]
    assert max(widths, key=widths.get) == columns[0]
    caption = browser.find_element(By.ID, "explanation-caption").text
    assert caption.startswith("Why the prediction is") and "base value" in caption


def test_a_classifiers_chart_explains_the_predicted_class(browser: WebDriver, store: Path, tmp_path: Path) -> None:
    point(store, "c1")
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", workers=1) as server:
        text = predict_in_the_form(browser, server)
        label = text.splitlines()[0].removeprefix("Prediction: ")
        bars = the_chart(browser)
        answer = explained(server, form_row(browser))
        cls = label if label in answer["explanations"][0]["contributions"] else answer["classes"][0]
        values = {bar.get_attribute("data-column"): float(bar.get_attribute("data-value")) for bar in bars}
        assert values == pytest.approx(answer["explanations"][0]["contributions"][cls], rel=1e-9, abs=1e-12)
        caption = browser.find_element(By.ID, "explanation-caption").text
        assert f"of {cls}" in caption and ("probability" in caption or "log-odds" in caption), caption
        # a new prediction replaces the chart: the old bars go, as many new ones come
        browser.execute_script("for (const g of document.querySelectorAll('#explanation-chart g.bar')) "
                               "g.dataset.stale = 'yes'")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, TIMEOUT).until(
            lambda b: not b.find_elements(By.CSS_SELECTOR, "#explanation-chart g[data-stale]")
            and len(b.find_elements(By.CSS_SELECTOR, "#explanation-chart g.bar")) == len(INPUTS))


def test_with_explanations_off_the_form_shows_the_prediction_alone(browser: WebDriver, store: Path,
                                                                   tmp_path: Path) -> None:
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", workers=1, SERVING_EXPLAIN="off") as server:
        text = predict_in_the_form(browser, server)
        assert text.startswith("Prediction: "), text
        assert not browser.find_element(By.ID, "explanation").is_displayed()
        assert browser.find_elements(By.CSS_SELECTOR, "#explanation-chart g.bar") == []
