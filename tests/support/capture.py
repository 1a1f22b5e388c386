"""Capture files as the prediction server writes them (the capture contract, docs/monitoring.md), for the monitor's
unit tests and the benchmark; the integration test reads the real server's own."""

from __future__ import annotations

import gzip
import json
import math
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from serving.capture import model_folder


def write_capture(capture_dir: Path, model: str, version: str, inputs: pd.DataFrame, predictions: Any,
                  when: datetime, rows_per_request: int = 1, name: str | None = None,
                  probabilities: list[dict[str, float] | None] | None = None) -> Path:
    """One complete capture file of `inputs` (one line per row) at `when` (UTC), in the contract's layout
    (`probabilities`: each row's class -> probability, as a classifier's server records them; None: none)."""
    stamp = when.astimezone(timezone.utc)
    folder = capture_dir / model_folder(model) / stamp.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or uuid.uuid4().hex}.jsonl.gz"
    records = inputs.to_dict(orient="records")
    with gzip.open(path, "wt", compresslevel=1) as out:
        request = ""
        for index, (record, prediction, proba) in enumerate(zip(records, predictions,
                                                               probabilities or [None] * len(records))):
            if index % rows_per_request == 0:
                request = uuid.uuid4().hex
            line = {"request_id": request, "row": index % rows_per_request,
                    "timestamp": stamp.isoformat().replace("+00:00", "Z"), "model_name": model,
                    "model_version": version, "inputs": {k: _scalar(v) for k, v in record.items()},
                    "prediction": _scalar(prediction), "probabilities": proba}
            out.write(json.dumps(line) + "\n")
    return path


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def post_rows(serving_url: str, frame: pd.DataFrame, batch: int = 25) -> set[str]:
    """Send `frame` to the prediction server's /invocations in batches; the model versions that answered."""
    import requests

    versions = set()
    for start in range(0, len(frame), batch):
        part = frame.iloc[start:start + batch]
        response = requests.post(f"{serving_url}/invocations", timeout=30, json={
            "dataframe_split": {"columns": list(part.columns), "data": part.to_numpy().tolist()}})
        response.raise_for_status()
        versions.add(response.headers["X-Model-Version"])
    return versions


def captured_rows(capture_dir: str | Path, model: str, version: str) -> int:
    """Rows of `model` `version` in the complete capture files (the server renames a file from .part when closed)."""
    rows = 0
    for path in Path(capture_dir, model_folder(model)).glob("*/*.jsonl.gz"):
        with gzip.open(path, "rt") as lines:
            rows += sum(json.loads(line)["model_version"] == version for line in lines)
    return rows
