"""Waiting for a running server to serve a version (and a release): shared by `python -m serving` and the deploy
and release steps."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any, Callable

ANY = object()  # wait_for_version: whatever candidate the server holds


class NotServing(Exception):
    """The server refused the version, or did not serve it in time."""


def wait_for_version(url: str, version: str, timeout: float, confirmations: int, interval: float = 0.2) -> None:
    """Succeed once `confirmations` consecutive answers (spread over the workers) are /ready 200 with `version`."""
    _wait(url, version, ANY, timeout, confirmations, interval)


def wait_for_release(url: str, version: str, candidate: dict[str, Any] | None, timeout: float, confirmations: int,
                     interval: float = 0.2) -> None:
    """Succeed once `confirmations` consecutive answers are /ready 200 with champion `version` and the release
    `candidate`: None (no release), or {"version": V, "mode": "shadow" | "canary"} and, if given, "share"."""
    _wait(url, version, candidate, timeout, confirmations, interval)


def release_matches(shown: Any, candidate: dict[str, Any] | None) -> bool:
    """Whether /version's "candidate" is the expected release (None: no release)."""
    if candidate is None or shown is None:
        return candidate is None and shown is None
    return isinstance(shown, dict) and all(shown.get(key) == candidate[key] for key in ("version", "mode", "share")
                                           if key in candidate)


def _describe(version: str, candidate: object) -> str:
    if candidate is ANY:
        return f"version {version}"
    if candidate is None:
        return f"version {version} with no candidate"
    assert isinstance(candidate, dict)
    return f"version {version} with candidate {candidate.get('version')} ({candidate.get('mode')})"


def _wait(url: str, version: str, candidate: object, timeout: float, confirmations: int, interval: float) -> None:
    deadline = time.monotonic() + timeout
    streak, last = 0, "no answer"
    wanted = _describe(version, candidate)
    matches: Callable[[Any], bool] = (lambda shown: True) if candidate is ANY else \
        (lambda shown: release_matches(shown, candidate))  # type: ignore[arg-type]
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/version", timeout=5) as response:  # noqa: S310 - operator's URL
                info = json.loads(response.read())
            refused = info.get("refused") or {}
            if refused.get("version") == version and (candidate is ANY or refused.get("candidate") == (
                    candidate.get("version") if isinstance(candidate, dict) else None)):
                raise NotServing(f"the server at {url} refused {wanted}: {refused.get('error')}")
            if info.get("version") == version and matches(info.get("candidate")):
                with urllib.request.urlopen(f"{url}/ready", timeout=5):  # 503 (an HTTPError) when not ready
                    streak += 1
                if streak >= confirmations:
                    return
                continue
            shown = ANY if candidate is ANY else info.get("candidate")
            streak, last = 0, f"still serving {_describe(str(info.get('version')), shown)}"
        except (OSError, ValueError) as exc:
            streak, last = 0, f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise NotServing(f"the server at {url} did not switch to {wanted} within {timeout:.0f}s ({last})")
