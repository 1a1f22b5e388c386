"""Toy model bundles trained the way the pipeline trains, and model stores made of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml.schema_file import ColumnSpec, SchemaConfig
from tests.support.signing import sign

FEATURES = (
    ColumnSpec(name="x1", dtype="float", nullable=True, min=-10, max=10),
    ColumnSpec(name="x2", dtype="float", min=-10, max=10),
    ColumnSpec(name="count", dtype="int", min=0, max=100),
    ColumnSpec(name="kind", dtype="category", allowed=("p", "q")),
)
REGRESSION = SchemaConfig(task="regression", target="y", min_rows=1,
                          columns=FEATURES + (ColumnSpec(name="y", dtype="float"),))
CLASSIFICATION = SchemaConfig(task="classification", target="y", min_rows=1,
                              columns=FEATURES + (ColumnSpec(name="y", dtype="category", allowed=("a", "b", "c")),))
GOOD_ROW = {"x1": 0.5, "x2": -1.0, "count": 3, "kind": "p"}


def toy_frame(task: str, rows: int = 200, seed: int = 0, offset: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(-5, 5, rows), rng.uniform(-5, 5, rows)
    count, kind = rng.integers(0, 50, rows), rng.choice(["p", "q"], rows)
    signal = x1 - x2 + (kind == "p") + count / 25
    y = signal + offset if task == "regression" else np.select([signal < -1, signal < 2], ["a", "b"], "c")
    x1[::7] = np.nan
    return pd.DataFrame({"x1": x1, "x2": x2, "count": count, "kind": kind, "y": y})


def _fit_toy(task: str, offset: float, n_estimators: int, family: str = "random_forest",
             hyperparameters: dict[str, Any] | None = None,
             calibration: str = "none") -> tuple[Any, pd.DataFrame, SchemaConfig, list[str]]:
    from include.ml.components.training import skops_trusted_types
    from tests.support.frames import pipeline_for

    schema = REGRESSION if task == "regression" else CLASSIFICATION
    frame = toy_frame(task, offset=offset)
    x, y = frame.drop(columns="y"), frame["y"]
    pipeline = pipeline_for(schema, family, hyperparameters or {"n_estimators": n_estimators},
                            calibration=calibration)
    pipeline.fit(x, y)
    return pipeline, x, schema, skops_trusted_types(pipeline, family)


def _model_kwargs(pipeline: Any, x: pd.DataFrame, schema: SchemaConfig, trusted: list[str]) -> dict[str, Any]:
    """What the pipeline's training step passes to MLflow when it logs a model."""
    from mlflow.models import infer_signature

    return {"serialization_format": "skops", "skops_trusted_types": trusted,
            "signature": infer_signature(x.head(), pipeline.predict(x.head())), "input_example": x.head(3),
            "metadata": {"feature_contract": schema.feature_contract()}}


def make_bundle(store: Path, version: str, task: str = "regression", offset: float = 0.0,
                n_estimators: int = 5, name: str = "toy", family: str = "random_forest",
                hyperparameters: dict[str, Any] | None = None, calibration: str = "none") -> Path:
    """Train a small random forest (or another `family` with `hyperparameters`, calibrated by `calibration` unless
    none) the way the pipeline does and install it as <store>/<version>.

    `offset` shifts a regression target so two versions' predictions are easy to tell apart.
    """
    pipeline, x, schema, trusted = _fit_toy(task, offset, n_estimators, family, hyperparameters, calibration)
    return install_bundle(store, version, pipeline, x, schema, trusted, name)


def install_bundle(store: Path, version: str, pipeline: Any, x: pd.DataFrame, schema: SchemaConfig,
                   trusted: list[str], name: str = "toy") -> Path:
    """A fitted pipeline saved as training logs it (input example, feature contract), converted to ONNX as export
    converts it (model.onnx), signed and installed as <store>/<version>."""
    import mlflow.sklearn

    from include.release.onnx.bundle import write_model_onnx
    from serving import store as store_mod

    staged = store_mod.staging_dir(store)
    mlflow.sklearn.save_model(pipeline, str(staged / store_mod.MODEL_DIR),
                              **_model_kwargs(pipeline, x, schema, trusted))
    (staged / store_mod.METADATA).write_text(json.dumps({
        "name": name, "version": version, "run_id": f"run-{version}", "trained_at": "2026-11-27T00:00:00+00:00",
        "metrics": {"test_rmse": 0.1}, "onnx": write_model_onnx(staged)}))
    store_mod.write_manifest(staged, name, version)
    sign(staged)
    return store_mod.install(staged, store, version)


def register_toy_model(name: str, experiment_id: str, offset: float = 0.0, task: str = "regression") -> str:
    """Log and register a toy model in the current MLflow tracking store, as training does; returns its version."""
    pipeline, x, schema, trusted = _fit_toy(task, offset, 5)
    return register_model(name, experiment_id, pipeline, x, schema, trusted)


def register_model(name: str, experiment_id: str, pipeline: Any, x: pd.DataFrame, schema: SchemaConfig,
                   trusted: list[str]) -> str:
    """Log and register a fitted pipeline in the current MLflow tracking store, as training does; returns its
    version."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_metric("test_rmse", 0.1)
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=name,
                                        **_model_kwargs(pipeline, x, schema, trusted))
    return str(info.registered_model_version)


def break_bundle(bundle: Path) -> None:
    """Corrupt the model file but keep the manifest consistent and signed: only loading can tell."""
    from serving import store as store_mod

    model_file = next((bundle / store_mod.MODEL_DIR).glob("model.*"))
    model_file.write_bytes(b"this is not a model")
    remanifest(bundle)
    sign(bundle)


def resign(bundle: Path) -> None:
    """Rewrite a bundle's manifest and sign it with the test key, as export would have signed what it now holds."""
    remanifest(bundle)
    sign(bundle)


def remanifest(bundle: Path) -> None:
    """Rewrite a bundle's manifest after its files changed, naming the model and version its bundle.json says."""
    from serving import store as store_mod

    meta = json.loads((bundle / store_mod.METADATA).read_text())
    store_mod.write_manifest(bundle, str(meta["name"]), str(meta["version"]))


def copy_store(source: Path, target: Path, current: str | None = None) -> Path:
    """A copy of the store `source`; with `current`, its CURRENT is a signed pointer to that version."""
    shutil.copytree(source, target, symlinks=True)
    if current:
        from tests.support.pointers import point

        point(target, current)
    return target


def add_card(bundle: Path, html: str, markdown: str = "# card\n") -> None:
    """Put a model card in a stored bundle as export does: the manifest lists it, the signature covers it."""
    from serving import store as store_mod

    (bundle / store_mod.CARD_HTML).write_text(html)
    (bundle / store_mod.CARD_MARKDOWN).write_text(markdown)
    remanifest(bundle)
    sign(bundle)
    from tests.support.pointers import named, point

    if named(bundle.parent) == bundle.name:  # the store's CURRENT names the old manifest: a new pointer names this
        point(bundle.parent, bundle.name)
