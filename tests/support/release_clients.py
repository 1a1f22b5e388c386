"""Clients for the release tests (tests/deploy/test_release_*.py): steady traffic through every step."""

from __future__ import annotations

import urllib.error
import urllib.request

from tests.support.servers import Poller


class PacedPoller(Poller):
    """A Poller that pauses between requests: traffic all through a release without a tight loop taking a core
    from the servers and the commands under test (a shadow at 1.0 doubles every request's work)."""

    def __init__(self, url: str, pause: float = 0.05) -> None:
        super().__init__(url)
        self.pause = pause

    def _poll(self) -> None:
        while not self._stop.wait(self.pause):
            request = urllib.request.Request(f"{self.url}/predict", self.body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.outcomes[(response.status, response.headers["X-Model-Version"])] += 1
            except urllib.error.HTTPError as exc:
                self.outcomes[(exc.code, None)] += 1
            except OSError as exc:
                self.outcomes[(type(exc).__name__, None)] += 1
