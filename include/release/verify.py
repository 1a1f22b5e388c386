"""After a rollout: every server answers the model's example rows exactly as the bundle itself does."""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from include.ml import artifacts
from include.ml.exceptions import DeploymentError
from serving.inputs import validate
from serving.model import ModelLoadError, load_bundle
from serving.signing import PublicKeys

log = logging.getLogger(__name__)
RESULT = "verification.json"


@dataclass
class VerificationResult:
    version: str
    rows: int
    servers: dict[str, float]  # instance id -> seconds for the prediction request
    not_running: list[str]
    engine: str = ""  # what computed the expected answers: the engine a server chooses for this bundle

    def summary(self) -> str:
        checked = (f"{len(self.servers)} server(s) answer {self.rows} example rows exactly as version {self.version}"
                   f" ({self.engine})")
        return checked + (f"; no server running for {self.not_running}" if self.not_running else "")

    def xcom(self) -> dict[str, Any]:
        return asdict(self)


def verify_fleet(version: str, servers: list[dict[str, Any]], bundle: Path, output_dir: Path, trusted: PublicKeys,
                 api_key: str | None = None) -> VerificationResult:
    """POST the bundle's self-check rows to every server in `servers` ({"instance_id", "url"}); the answers
    and the X-Model-Version header must equal the bundle's own predictions and `version`."""
    try:
        # The server's own loader: the same checks, and the same engine choice (ONNX Runtime if it agrees with
        # sklearn on the same rows, else sklearn), so the expected answers are what a server computes.
        model = load_bundle(bundle, trusted)
    except ModelLoadError as exc:
        raise DeploymentError(f"cannot verify version {version}: {exc}") from exc
    rows = model.self_check_rows
    expected = model.predict(validate(rows, model.contract, max_rows=len(rows)).columns).values
    headers = {"Content-Type": "application/json", **({"X-API-Key": api_key} if api_key else {})}
    result = VerificationResult(version, len(rows), {}, [], model.engine.name)
    for server in servers:
        if not server["url"]:
            result.not_running.append(server["instance_id"])
            continue
        started = time.perf_counter()
        request = urllib.request.Request(f"{server['url']}/invocations",
                                         json.dumps({"dataframe_records": rows}).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answered, served = json.loads(response.read())["predictions"], response.headers["X-Model-Version"]
        except (OSError, ValueError, KeyError) as exc:
            raise DeploymentError(f"instance {server['instance_id']} ({server['url']}) failed the prediction "
                                  f"check: {type(exc).__name__}: {exc}") from exc
        same = len(answered) == len(expected) and all(
            math.isclose(a, e, rel_tol=1e-9) if isinstance(e, float) else a == e for a, e in zip(answered, expected))
        if served != version or not same:
            raise DeploymentError(f"instance {server['instance_id']} answered as version {served} with "
                                  f"{answered[:3]}, expected version {version} with {expected[:3]}")
        result.servers[server["instance_id"]] = round(time.perf_counter() - started, 4)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("verify: %s", result.summary())
    return result
