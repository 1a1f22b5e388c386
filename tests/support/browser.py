"""Headless Chromium driven through selenium and the distribution's chromedriver (tests/serving's browser tests)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def require_chromium() -> None:
    """Skip the calling test module when the browser is missing; under CI that is an error instead."""
    if CHROMIUM and CHROMEDRIVER:
        return
    # CI must run these tests, so a missing browser fails there; a laptop without one may skip.
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError("chromium and chromedriver are required under CI: apt-get install -y chromium "
                           "chromium-driver (or `make tools`)")
    pytest.skip("chromium/chromedriver not installed (`make tools` installs them)", allow_module_level=True)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    # An explicit driver path keeps Selenium Manager from trying to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
