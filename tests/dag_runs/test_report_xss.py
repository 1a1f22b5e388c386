"""Stored XSS through the reports the api-server serves (plugins/mlops_links.py), in a real headless Chromium
logged in to the real Airflow stack.

The attacker controls the data, not the config. A source file of the wine table with a text value
`<img src=x onerror=...>` in a numeric column and an extra column named `<svg onload=...>` is run through the real
ml_pipeline DAG: ingest keeps both, validate fails, and Great Expectations writes both into the Data Docs as live
markup (it does not escape them: shown by opening the same file without our headers, where the script runs). The
monitoring report comes from a real monitor run (tests/support/hostile_monitor.py: a champion trained on a category
column named `<svg onload=...>`, captured traffic holding `<img onerror=...>` in it), written into the same run's
monitor/ folder. Each payload, if it ran, would set document.title and call a local listener: through the real routes
neither happens, the pages still load, and every answer carries the CSP sandbox and nosniff.
"""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import requests

from include.ml.artifacts import safe_run_id
from tests.support.browser import chromium, require_chromium
from tests.support.hostile_monitor import hostile_monitor_run
from tests.support.network import free_port
from tests.support.project import WINE_CSV

pytestmark = pytest.mark.integration

require_chromium()

from selenium.webdriver.common.by import By  # noqa: E402 - after the skip, as in tests/serving/test_browser.py
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
SETTLE = 2.0  # seconds after load for an onerror/onload handler (and its fetch) to have happened


class Listener:
    """A local HTTP server that records the paths a payload's fetch() asks for."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                hits.append(self.path)
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def payload(self, tag: str, marker: str) -> str:
        # Backticks, no single quotes: GX shows a column list as a Python repr, which would escape them.
        action = f"document.title=`{marker}`;fetch(`http://127.0.0.1:{self.port}/{marker}`)"
        return f'<img src=x onerror="{action}">' if tag == "img" else f'<svg onload="{action}">'


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    served = Listener()
    yield served
    served.server.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def hostile_run(airflow_stack, listener: Listener) -> tuple[str, Path]:
    """An ml_pipeline run on a source with a hostile value and a hostile column name: (run id, its artifacts)."""
    client = airflow_stack.client
    wine = pd.read_csv(WINE_CSV, sep=";").head(150)
    wine["alcohol"] = wine["alcohol"].astype(object)
    wine.loc[3, "alcohol"] = listener.payload("img", "xss-value")
    wine[listener.payload("svg", "xss-column")] = 1.0
    source = airflow_stack.sources / "hostile.csv"
    wine.to_csv(source, sep=";", index=False)
    client.wait_for_dag("ml_pipeline", timeout=120)
    client.unpause("ml_pipeline")
    run_id = client.trigger("ml_pipeline", conf={"source": str(source)},
                            note="tests/dag_runs/test_report_xss.py")["dag_run_id"]
    client.wait_for_run("ml_pipeline", run_id, timeout=240, expect="failed")
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances("ml_pipeline", run_id)}
    assert (states["ingest"], states["validate"]) == ("success", "failed"), states
    return run_id, airflow_stack.artifacts_root / safe_run_id(run_id)


def log_in(browser: WebDriver, stack) -> None:
    """The UI's login cookie (`_token`, a JWT of the admin) on the api-server's origin."""
    browser.get(f"{stack.api_url}/api/v2/monitor/health")
    browser.delete_all_cookies()
    browser.add_cookie({"name": "_token", "value": stack.client.token(), "path": "/"})


def settled(browser: WebDriver) -> None:
    deadline = time.monotonic() + 15
    while browser.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(SETTLE)


def assert_no_script_ran(browser: WebDriver, listener: Listener, markers: tuple[str, ...]) -> None:
    assert browser.title not in markers, f"a payload ran: title {browser.title!r}"
    assert not [hit for hit in listener.hits if hit.strip("/") in markers], f"a payload called home: {listener.hits}"


def validation_page(run_dir: Path) -> Path:
    (page,) = (run_dir / "validate" / "data_docs" / "validations").rglob("*.html")
    return page


def test_hostile_data_in_the_data_docs_runs_no_script_in_a_logged_in_browser(
        airflow_stack, hostile_run: tuple[str, Path], browser: WebDriver, listener: Listener) -> None:
    run_id, run_dir = hostile_run
    page = validation_page(run_dir)
    raw = page.read_text()
    value, column = listener.payload("img", "xss-value"), listener.payload("svg", "xss-column")
    assert value in raw, "the hostile value did not reach the Data Docs as markup"
    assert column in raw, "the hostile column name did not reach the Data Docs as markup"

    # Control: the same file without our headers runs the payload, so the check below can fail.
    listener.hits.clear()
    browser.get(page.as_uri())
    settled(browser)
    assert browser.title in ("xss-value", "xss-column"), f"the payload did not run without the CSP: {browser.title!r}"
    assert listener.hits, "the payload's fetch did not reach the listener without the CSP"

    # Through the real route, logged in as the admin: the page loads, its hostile markup is there, nothing runs.
    listener.hits.clear()
    log_in(browser, airflow_stack)
    base = f"{airflow_stack.api_url}/mlops/data-docs/{safe_run_id(run_id)}/"
    for path in ("index.html", page.relative_to(run_dir / "validate" / "data_docs").as_posix()):
        browser.get(base + path)
        settled(browser)
        assert_no_script_ran(browser, listener, ("xss-value", "xss-column"))
        assert browser.title.endswith("by Great Expectations"), (path, browser.title)  # the page, not an error
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Expectation Validation Result" in text and "alcohol" in text
    # Readable without the blocked CDN styles: the inline style shows each status as a word (data_docs.STYLE).
    status = "return getComputedStyle(document.querySelector(arguments[0]), '::before').content"
    assert "failed" in browser.execute_script(status, ".fa-times")
    assert "passed" in browser.execute_script(status, ".fa-check-circle")
    assert browser.execute_script("return document.querySelectorAll('img[onerror]').length") == 1  # there, inert
    assert "<svg onload=" in browser.page_source or browser.find_elements(By.CSS_SELECTOR, "svg[onload]")
    blocked = [e["message"] for e in browser.get_log("browser") if "sandboxed" in e["message"]]
    assert blocked, "Chromium logged no blocked script for the sandboxed page"


def test_hostile_feature_names_and_values_in_the_monitoring_report_run_no_script(
        airflow_stack, hostile_run: tuple[str, Path], browser: WebDriver, listener: Listener,
        tmp_path: Path) -> None:
    run_id, run_dir = hostile_run
    name, value = listener.payload("svg", "xss-feature"), listener.payload("img", "xss-category")
    result = hostile_monitor_run(tmp_path, name, value, run_dir / "monitor")
    assert result.drifted == [name]  # the monitor ran on the hostile column and its values
    page = (run_dir / "monitor" / "report.html").read_text()
    assert name not in page and value not in page  # escaped where we render it (the values are only in the plots)

    listener.hits.clear()
    log_in(browser, airflow_stack)
    browser.get(f"{airflow_stack.api_url}/mlops/monitoring/{safe_run_id(run_id)}/report.html")
    settled(browser)
    assert_no_script_ran(browser, listener, ("xss-feature", "xss-category"))
    assert browser.title.startswith("Monitoring hostile-model v1"), browser.title
    assert browser.find_element(By.CSS_SELECTOR, "tr.drifted td").text == name  # the name, as text
    assert f"drifted: {name}" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.execute_script("return document.querySelectorAll('svg, img[onerror]').length") == 0
    # The plots are data: images, which the CSP allows: they load (the attribution shares; x1, x2, the hostile
    # feature, the predictions).
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure img")) == 5
    assert browser.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")


def test_every_report_answer_carries_the_sandbox_csp_and_nosniff(airflow_stack,
                                                                  hostile_run: tuple[str, Path]) -> None:
    run_id, run_dir = hostile_run
    client = airflow_stack.client
    part = safe_run_id(run_id)
    docs = f"{airflow_stack.api_url}/mlops/data-docs/{part}/"
    (run_dir / "monitor").mkdir(exist_ok=True)
    if not (run_dir / "monitor" / "summary.json").exists():  # run alone, without the monitor test
        (run_dir / "monitor" / "summary.json").write_text("{}")
    answers = {
        "page": client.fetch(docs + "index.html"),
        "stylesheet": client.fetch(docs + "static/styles/data_docs_default_styles.css"),
        "svg image": client.fetch(docs + "static/images/short-logo-vector.svg"),
        "json": client.fetch(f"{airflow_stack.api_url}/mlops/monitoring/{part}/summary.json"),
        "no login": requests.get(docs + "index.html", timeout=30),
        "missing": client.fetch(docs + "nothing.html"),
        "escape": client.fetch(docs + "..%2F..%2Fingest%2Fdata.csv"),
    }
    statuses = {what: answer.status_code for what, answer in answers.items()}
    assert statuses == {"page": 200, "stylesheet": 200, "svg image": 200, "json": 200, "no login": 401,
                        "missing": 404, "escape": 404}
    assert answers["page"].headers["Content-Type"].startswith("text/html")
    for what, answer in answers.items():
        assert answer.headers.get("Content-Security-Policy") == CSP, what
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", what
