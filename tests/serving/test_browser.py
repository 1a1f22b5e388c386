"""The form at GET / in a real headless Chromium against a real gunicorn server: what a person trying the model sees."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from serving import store as store_mod
from tests.support import typed
from tests.support.browser import chromium, require_chromium
from tests.support.bundles import FEATURES, GOOD_ROW, remanifest
from tests.support.network import free_port
from tests.support.pointers import point
from tests.support.servers import PredictionServer
from tests.support.signing import sign

pytestmark = pytest.mark.integration

require_chromium()

from selenium.webdriver.common.by import By  # noqa: E402 - after the skip, so a machine without selenium's browser skips cleanly
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TIMEOUT = 15  # seconds for the page's fetch to answer; generous for 2 loaded cores


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def post_predict(server: PredictionServer, record: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"{server.url}/predict", data=json.dumps(record).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def fill(browser: WebDriver, record: dict[str, Any]) -> None:
    for name, value in record.items():
        field = browser.find_element(By.NAME, name)
        if field.tag_name == "select":
            Select(field).select_by_visible_text(str(value))
        else:
            field.clear()
            field.send_keys(str(value))


def result_text(browser: WebDriver) -> str:
    """The #result text once the page's fetch has answered."""
    WebDriverWait(browser, TIMEOUT).until(lambda b: b.find_element(By.ID, "result").text.strip())
    return browser.find_element(By.ID, "result").text


def test_form_has_a_field_per_feature_with_its_range(browser: WebDriver, server: PredictionServer) -> None:
    browser.get(server.url)
    names = [el.get_attribute("name") for el in browser.find_elements(By.CSS_SELECTOR, "#predict-form [name]")]
    assert names == [f.name for f in FEATURES]
    for feature in FEATURES:
        field = browser.find_element(By.NAME, feature.name)
        label = field.find_element(By.XPATH, "./ancestor::label").text
        if feature.allowed is not None:
            options = [o.get_attribute("value") for o in Select(field).options]
            assert options == [str(v) for v in feature.allowed]
        else:
            assert field.get_attribute("type") == "number"
            assert float(field.get_attribute("min")) == feature.min
            assert float(field.get_attribute("max")) == feature.max
            assert f"{feature.min} to {feature.max}" in label  # the range is shown, not only enforced
            # Only non-nullable inputs are required: leaving a nullable one empty sends null.
            assert (field.get_attribute("required") is not None) == (not feature.nullable)


def test_submitting_the_form_shows_what_the_api_predicts(browser: WebDriver, server: PredictionServer) -> None:
    expected = post_predict(server, GOOD_ROW)["predictions"][0]
    browser.get(server.url)
    fill(browser, GOOD_ROW)
    browser.find_element(By.ID, "submit").click()
    text = result_text(browser)
    assert text.startswith("Prediction: "), text
    # Compared as numbers: JavaScript and Python may spell the same float differently (1e-7 vs 1e-07).
    assert float(text.splitlines()[0].removeprefix("Prediction: ")) == expected
    assert browser.find_element(By.ID, "result").get_attribute("class") != "error"


def test_out_of_range_value_is_refused_with_an_error(browser: WebDriver, server: PredictionServer) -> None:
    browser.get(server.url)
    fill(browser, {**GOOD_ROW, "x2": 50})
    browser.find_element(By.ID, "submit").click()
    field = browser.find_element(By.NAME, "x2")
    # The browser checks the range itself and says why; an invalid form never fires its submit event.
    assert browser.execute_script("return arguments[0].validity.rangeOverflow", field)
    assert browser.execute_script("return document.getElementById('predict-form').checkValidity()") is False
    assert field.get_attribute("validationMessage")
    assert browser.find_element(By.ID, "result").text == ""
    # A client that skips the browser's check (the submit handler run directly) gets the server's refusal shown.
    browser.execute_script("document.getElementById('predict-form')"
                           ".dispatchEvent(new Event('submit', {cancelable: true}))")
    text = result_text(browser)
    assert text.startswith("Error 422: "), text
    assert "x2" in text and "range" in text
    assert browser.find_element(By.ID, "result").get_attribute("class") == "error"


def test_category_values_keep_their_json_type(browser: WebDriver, store: Path, tmp_path: Path) -> None:
    """A category whose allowed values are numbers (codes such as 1 and 2) must be sent as numbers: the server
    matches category values by JSON type too, so "1" is not 1."""
    bundle = store / "1"
    mlmodel_path = bundle / store_mod.MODEL_DIR / "MLmodel"
    mlmodel = yaml.safe_load(mlmodel_path.read_text())
    for feature in mlmodel["metadata"]["feature_contract"]["features"]:
        if feature["name"] == "kind":
            feature["allowed"] = [1, 2]  # the model one-hot encodes unseen categories as zeros, so it still predicts
    mlmodel_path.write_text(yaml.safe_dump(mlmodel))
    # The saved input example still says "p"; without it the load-time self-check uses the contract's example row.
    (bundle / store_mod.MODEL_DIR / "serving_input_example.json").unlink()
    remanifest(bundle)
    sign(bundle)
    point(store, "1")  # a new manifest: the pointer names its sha256
    record = {**GOOD_ROW, "kind": 2}
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log") as server:
        expected = post_predict(server, record)["predictions"][0]
        browser.get(server.url)
        fill(browser, record)
        browser.find_element(By.ID, "submit").click()
        text = result_text(browser)
    assert text.startswith("Prediction: "), text
    assert float(text.splitlines()[0].removeprefix("Prediction: ")) == expected


def test_every_dtype_has_its_input_and_the_form_predicts_what_the_api_does(browser: WebDriver, typed_store: Path,
                                                                           tmp_path: Path) -> None:
    """Ordinal: a select in its order; datetime: a datetime-local input read as UTC (sent as ISO text, or as seconds
    for a unix column); open category: free text; key and ignored columns: optional text."""
    record = {"dep_delay": 12.5, "time_hour": "2013-05-01T10:00:00", "sched": 1367400000, "cut": "Very Good",
              "carrier": "UA", "dest": "D07", "tailnum": "N003", "flight_id": "1001"}
    with PredictionServer(typed_store, free_port(), tmp_path / "gunicorn.log") as server:
        expected = post_predict(server, record)["predictions"][0]
        browser.get(server.url)
        names = [el.get_attribute("name") for el in browser.find_elements(By.CSS_SELECTOR, "#predict-form [name]")]
        assert names == [*typed.FEATURES, "flight_id", "note"]
        field = {name: browser.find_element(By.NAME, name) for name in names}
        assert [o.text for o in Select(field["cut"]).options] == ["Fair", "Good", "Very Good"]
        assert [o.text for o in Select(field["carrier"]).options] == ["AA", "B6", "DL", "UA", "(missing)"]
        for name in ("time_hour", "sched"):
            assert field[name].get_attribute("type") == "datetime-local"
        assert (field["time_hour"].get_attribute("min"), field["time_hour"].get_attribute("max")) == \
            ("2013-01-01T00:00:00", "2013-12-31T23:00:00")
        assert field["time_hour"].get_attribute("required") is not None
        for name in ("dest", "tailnum", "flight_id", "note"):  # nullable, key, ignored: none is required
            assert field[name].get_attribute("type") == "text" and field[name].get_attribute("required") is None
        assert "ordered" in field["cut"].find_element(By.XPATH, "./ancestor::label").text
        fill(browser, {k: v for k, v in record.items() if k not in ("time_hour", "sched")})
        browser.execute_script("arguments[0].value = '2013-05-01T10:00:00';"
                               "arguments[1].value = '2013-05-01T09:20:00';", field["time_hour"], field["sched"])
        browser.find_element(By.ID, "submit").click()
        text = result_text(browser)
    assert text.startswith("Prediction: "), text
    assert float(text.splitlines()[0].removeprefix("Prediction: ")) == expected
