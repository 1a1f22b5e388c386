"""The fleet's release metrics: each server's /metrics read, two readings of the fleet diffed into one window.

A reading keeps the `serving_release_*` samples of each server (Prometheus text exposition, parsed by
prometheus_client's parser; `_created` timestamps left out). The window between two readings is, per server, the
growth of every counter and histogram series, summed over the servers: so the role metrics of a window compare the
champion and the candidate on the same requests and seconds. A server whose counters went down between the two
readings restarted: its window is its whole second reading (a counter starts again from zero). A server only in
the second reading contributes all of it; one only in the first is left out (and named in `Window.missing`).
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from include.release.evidence.settings import EvidenceError

PREFIX = "serving_release_"
MAX_BYTES = 16 * 2**20  # a /metrics page larger than this is not a prediction server's

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
Series = tuple[str, Labels]  # a sample's name and labels


class MetricsUnavailable(EvidenceError):
    """A server's /metrics could not be read or parsed; the message names the server."""


def parse_exposition(text: str) -> dict[Series, float]:
    """The serving_release_* samples of a Prometheus text exposition. Raises ValueError on malformed text."""
    samples: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(PREFIX) and not sample.name.endswith("_created"):
                series = (sample.name, tuple(sorted(sample.labels.items())))
                samples[series] = samples.get(series, 0.0) + float(sample.value)
    return samples


@dataclass(frozen=True)
class FleetSnapshot:
    """One reading of every server: its URL -> its release samples; `taken_at` in seconds since the epoch."""

    taken_at: float
    instances: Mapping[str, Mapping[Series, float]]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (an XCom value); from_json reads it back."""
        return {"taken_at": self.taken_at,
                "instances": {url: [[name, dict(labels), value] for (name, labels), value in samples.items()]
                              for url, samples in self.instances.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FleetSnapshot:
        try:
            instances = {str(url): {(str(name), tuple(sorted((str(k), str(v)) for k, v in labels.items()))):
                                    float(value) for name, labels, value in rows}
                         for url, rows in data["instances"].items()}
            return cls(float(data["taken_at"]), instances)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvidenceError(f"not a fleet snapshot (FleetSnapshot.to_json's form): {exc!r}") from exc


def read_instance(url: str, timeout: float = 10.0) -> dict[Series, float]:
    """The release samples of the server at `url` (its /metrics). Raises MetricsUnavailable naming it."""
    address = url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise MetricsUnavailable(f"{address} could not be read: {getattr(exc, 'reason', None) or exc}") from exc
    if len(body) > MAX_BYTES:
        raise MetricsUnavailable(f"{address} answered more than {MAX_BYTES:,} bytes")
    try:
        return parse_exposition(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetricsUnavailable(f"{address} is not a Prometheus text exposition: {exc}") from exc


def read_fleet(urls: Iterable[str], timeout: float = 10.0) -> FleetSnapshot:
    """Every server's release samples, now. Raises MetricsUnavailable when one cannot be read."""
    urls = list(urls)
    if not urls:
        raise EvidenceError("no server to read /metrics from (the release status lists none)")
    return FleetSnapshot(time.time(), {url: read_instance(url, timeout) for url in urls})


@dataclass(frozen=True)
class Window:
    """The growth of each release series over the window, summed over the servers."""

    counts: Mapping[Series, float]
    seconds: float
    servers: int
    restarted: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def total(self, name: str, **labels: str) -> float:
        """The sum of the series called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.counts.items() if n == name and wanted <= set(ls))

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets (upper bound, count) for the series matching `labels`, summed over
        their other labels, by upper bound (+Inf last)."""
        wanted = set(labels.items())
        sums: dict[float, float] = {}
        for (n, ls), value in self.counts.items():
            if n == f"{name}_bucket" and wanted <= set(ls):
                bound = dict(ls).get("le")
                if bound is not None:
                    key = math.inf if bound == "+Inf" else float(bound)
                    sums[key] = sums.get(key, 0.0) + value
        return sorted(sums.items())


def window(start: FleetSnapshot, now: FleetSnapshot) -> Window:
    """What grew between two readings (module docstring)."""
    counts: dict[Series, float] = {}
    restarted = []
    for url, samples in now.instances.items():
        before = start.instances.get(url, {})
        if any(value < before.get(series, 0.0) for series, value in samples.items()):
            restarted.append(url)
            before = {}
        for series, value in samples.items():
            counts[series] = counts.get(series, 0.0) + value - before.get(series, 0.0)
    missing = tuple(sorted(set(start.instances) - set(now.instances)))
    return Window(counts, max(now.taken_at - start.taken_at, 0.0), len(now.instances), tuple(restarted), missing)
