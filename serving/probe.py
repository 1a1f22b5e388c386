"""Waiting for a running server to serve a version: shared by `python -m serving` and the deploy step."""

from __future__ import annotations

import json
import time
import urllib.request


class NotServing(Exception):
    """The server refused the version, or did not serve it in time."""


def wait_for_version(url: str, version: str, timeout: float, confirmations: int, interval: float = 0.2) -> None:
    """Succeed once `confirmations` consecutive answers (spread over the workers) are /ready 200 with `version`."""
    deadline = time.monotonic() + timeout
    streak, last = 0, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/version", timeout=5) as response:  # noqa: S310 - operator's URL
                info = json.loads(response.read())
            refused = info.get("refused") or {}
            if refused.get("version") == version:
                raise NotServing(f"the server at {url} refused version {version}: {refused.get('error')}")
            if info.get("version") == version:
                with urllib.request.urlopen(f"{url}/ready", timeout=5):  # 503 (an HTTPError) when not ready
                    streak += 1
                if streak >= confirmations:
                    return
                continue
            streak, last = 0, f"still serving version {info.get('version')}"
        except (OSError, ValueError) as exc:
            streak, last = 0, f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise NotServing(f"the server at {url} did not switch to version {version} within {timeout:.0f}s ({last})")
