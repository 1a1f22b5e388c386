"""Building model bundles and running real gunicorn prediction servers, for the serving and deployment tests."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml.entities import ColumnSpec, SchemaConfig

REPO = Path(__file__).resolve().parents[1]
FEATURES = (
    ColumnSpec(name="x1", dtype="float", nullable=True, min=-10, max=10),
    ColumnSpec(name="x2", dtype="float", min=-10, max=10),
    ColumnSpec(name="count", dtype="int", min=0, max=100),
    ColumnSpec(name="kind", dtype="category", allowed=("p", "q")),
)
REGRESSION = SchemaConfig(task="regression", target="y", min_rows=1, columns=FEATURES + (ColumnSpec(name="y", dtype="float"),))
CLASSIFICATION = SchemaConfig(task="classification", target="y", min_rows=1, columns=FEATURES + (ColumnSpec(name="y", dtype="category",
                                                                               allowed=("a", "b", "c")),))
GOOD_ROW = {"x1": 0.5, "x2": -1.0, "count": 3, "kind": "p"}


def toy_frame(task: str, rows: int = 200, seed: int = 0, offset: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(-5, 5, rows), rng.uniform(-5, 5, rows)
    count, kind = rng.integers(0, 50, rows), rng.choice(["p", "q"], rows)
    signal = x1 - x2 + (kind == "p") + count / 25
    y = signal + offset if task == "regression" else np.select([signal < -1, signal < 2], ["a", "b"], "c")
    x1[::7] = np.nan
    return pd.DataFrame({"x1": x1, "x2": x2, "count": count, "kind": kind, "y": y})


def _fit_toy(task: str, offset: float, n_estimators: int) -> tuple[Any, pd.DataFrame, SchemaConfig, list[str]]:
    from sklearn.pipeline import Pipeline

    from include.ml.components.training import skops_trusted_types
    from include.ml.components.transformation import build_preprocessor
    from include.ml.models import FAMILIES

    schema = REGRESSION if task == "regression" else CLASSIFICATION
    frame = toy_frame(task, offset=offset)
    x, y = frame.drop(columns="y"), frame["y"]
    pipeline = Pipeline([("preprocess", build_preprocessor(schema)),
                         ("model", FAMILIES["random_forest"].build(task, 0, {"n_estimators": n_estimators}))])
    pipeline.fit(x, y)
    return pipeline, x, schema, skops_trusted_types(pipeline, "random_forest")


def _model_kwargs(pipeline: Any, x: pd.DataFrame, schema: SchemaConfig, trusted: list[str]) -> dict[str, Any]:
    """What the pipeline's training step passes to MLflow when it logs a model."""
    from mlflow.models import infer_signature

    return {"serialization_format": "skops", "skops_trusted_types": trusted,
            "signature": infer_signature(x.head(), pipeline.predict(x.head())), "input_example": x.head(3),
            "metadata": {"feature_contract": schema.feature_contract()}}


def make_bundle(store: Path, version: str, task: str = "regression", offset: float = 0.0,
                n_estimators: int = 5, name: str = "toy") -> Path:
    """Train a small random forest the way the pipeline does and install it as <store>/<version>.

    `offset` shifts a regression target so two versions' predictions are easy to tell apart.
    """
    import mlflow.sklearn

    from serving import store as store_mod

    pipeline, x, schema, trusted = _fit_toy(task, offset, n_estimators)
    staged = store_mod.staging_dir(store)
    mlflow.sklearn.save_model(pipeline, str(staged / store_mod.MODEL_DIR), **_model_kwargs(pipeline, x, schema, trusted))
    (staged / store_mod.METADATA).write_text(json.dumps({
        "name": name, "version": version, "run_id": f"run-{version}", "trained_at": "2026-11-27T00:00:00+00:00",
        "metrics": {"test_rmse": 0.1}}))
    store_mod.write_manifest(staged)
    return store_mod.install(staged, store, version)


def register_toy_model(name: str, experiment_id: str, offset: float = 0.0) -> str:
    """Log and register a toy model in the current MLflow tracking store, as training does; returns its version."""
    import mlflow

    pipeline, x, schema, trusted = _fit_toy("regression", offset, 5)
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_metric("test_rmse", 0.1)
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=name,
                                        **_model_kwargs(pipeline, x, schema, trusted))
    return str(info.registered_model_version)


def break_bundle(bundle: Path) -> None:
    """Corrupt the model file but keep the manifest consistent: only loading can tell."""
    from serving import store as store_mod

    model_file = next((bundle / store_mod.MODEL_DIR).glob("model.*"))
    model_file.write_bytes(b"this is not a model")
    store_mod.write_manifest(bundle)


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class PredictionServer:
    """A real gunicorn prediction server in its own process group, stopped on exit."""

    def __init__(self, store: Path, port: int, log_path: Path, workers: int = 2, **env: str) -> None:
        self.store, self.port, self.log_path = store, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "SERVING_MODEL_STORE": str(store), "SERVING_BIND": f"127.0.0.1:{port}",
                    "SERVING_WORKERS": str(workers), "SERVING_POLL_SECONDS": "0.2", "SERVING_ACCESS_LOG": "",
                    "PYTHONPATH": str(REPO), **env}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "PredictionServer":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "serving" / "gunicorn.conf.py")],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                get_json(f"{self.url}/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"gunicorn did not answer within 60s:\n{self.log()}")

    def __exit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def copy_store(source: Path, target: Path, current: str | None = None) -> Path:
    shutil.copytree(source, target)
    if current:
        from serving import store as store_mod

        store_mod.write_pointer(target, current)
    return target


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return None
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


class Poller:
    """A client posting `row` to /predict until stopped, counting (status, model version) pairs."""

    def __init__(self, url: str, row: dict[str, Any] | None = None) -> None:
        self.url, self.body = url, json.dumps(row or GOOD_ROW).encode()
        self.outcomes: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(f"{self.url}/predict", self.body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.outcomes[(response.status, response.headers["X-Model-Version"])] += 1
            except urllib.error.HTTPError as exc:
                self.outcomes[(exc.code, None)] += 1
            except OSError as exc:
                self.outcomes[(type(exc).__name__, None)] += 1

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def failures(self) -> Counter:
        return Counter({key: n for key, n in self.outcomes.items() if key[0] != 200})

    def versions(self) -> set[str]:
        return {version for (status, version) in self.outcomes if status == 200}
