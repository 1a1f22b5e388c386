"""Export: a registered MLflow model version becomes a verified bundle in a model store (include/release/export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.release.export import export_bundle
from serving import store
from serving.model import load_bundle


def test_export_from_a_real_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("export", artifact_location=(tmp_path / "art").as_uri())
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    model = LinearRegression().fit(x, [0.0, 2.0, 4.0, 6.0])
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metric("test_rmse", 0.25)
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name="exported",
                                        serialization_format="skops", signature=infer_signature(x, model.predict(x)))
    client = mlflow.tracking.MlflowClient()
    client.set_registered_model_alias("exported", "champion", "1")

    bundle = export_bundle("exported", "champion", tmp_path / "store")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert bundle.name == "1" and meta["version"] == "1" and meta["run_id"] == info.run_id
    assert meta["metrics"] == {"test_rmse": 0.25}
    store.verify_manifest(bundle)
    loaded = load_bundle(bundle)  # signature fallback: names and types, no ranges
    assert loaded.contract.names == ("a",) and loaded.predict({"a": [5.0]}).values == pytest.approx([10.0])
    assert export_bundle("exported", "1", tmp_path / "store") == bundle  # a second export changes nothing
    with pytest.raises(store.BundleError, match="no version or alias 'nope'"):
        export_bundle("exported", "nope", tmp_path / "store")
