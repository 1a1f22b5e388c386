"""The model store: checksummed bundles, atomic pointers, export from a real MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving import store as store_mod
from serving.model import ModelLoadError, load_bundle


def test_manifest_catches_unlisted_missing_and_changed_files(store: Path) -> None:
    bundle = store / "1"
    store_mod.verify_manifest(bundle)
    (bundle / "extra.txt").write_text("x")
    with pytest.raises(store_mod.BundleError, match="unlisted"):
        store_mod.verify_manifest(bundle)
    (bundle / "extra.txt").unlink()
    (bundle / "model" / "MLmodel").write_text("changed")
    with pytest.raises(store_mod.BundleError, match="checksum mismatch for model/MLmodel"):
        store_mod.verify_manifest(bundle)
    (bundle / "bundle.json").unlink()
    with pytest.raises(store_mod.BundleError, match="missing"):
        store_mod.verify_manifest(bundle)


def test_load_bundle_refuses_a_model_without_input_description(store: Path) -> None:
    mlmodel = store / "1" / "model" / "MLmodel"
    text = mlmodel.read_text()
    cut = text.index("metadata:")
    mlmodel.write_text(text[:cut])  # no metadata, no signature after it
    store_mod.write_manifest(store / "1")
    with pytest.raises(ModelLoadError, match="neither metadata.feature_contract nor a signature"):
        load_bundle(store / "1")


def test_install_is_atomic_and_idempotent(store: Path, tmp_path: Path) -> None:
    staged = store_mod.staging_dir(store)
    (staged / "bundle.json").write_text("{}")
    store_mod.write_manifest(staged)
    target = store_mod.install(staged, store, "7")
    assert (target / "bundle.json").is_file() and not staged.exists()
    again = store_mod.staging_dir(store)
    (again / "bundle.json").write_text('{"different": true}')
    store_mod.write_manifest(again)
    assert store_mod.install(again, store, "7") == target
    assert json.loads((target / "bundle.json").read_text()) == {}  # an installed version is never overwritten
    assert "7" in store_mod.versions(store) and not any(p.name.startswith(".staging") for p in store.iterdir())


def test_export_from_a_real_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression
    import pandas as pd

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

    bundle = store_mod.export("exported", "champion", tmp_path / "store")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert bundle.name == "1" and meta["version"] == "1" and meta["run_id"] == info.run_id
    assert meta["metrics"] == {"test_rmse": 0.25}
    store_mod.verify_manifest(bundle)
    loaded = load_bundle(bundle)  # signature fallback: names and types, no ranges
    assert loaded.contract.names == ("a",) and loaded.predict({"a": [5.0]}).values == pytest.approx([10.0])
    assert store_mod.export("exported", "1", tmp_path / "store") == bundle  # a second export changes nothing
    with pytest.raises(store_mod.BundleError, match="no version or alias 'nope'"):
        store_mod.export("exported", "nope", tmp_path / "store")


def test_fetch_keeps_the_same_bundle_and_refuses_a_reused_version_name(store: Path, tmp_path: Path) -> None:
    import shutil

    from tests.serving_support import make_bundle

    same = tmp_path / "same"
    shutil.copytree(store / "1", same / "1")
    assert store_mod.fetch(str(same), "1", store) == store / "1"
    other = tmp_path / "other"
    make_bundle(other, "1", offset=50.0)  # e.g. version 1 of a registry that was reset
    with pytest.raises(store_mod.BundleError, match="holds a different bundle"):
        store_mod.fetch(str(other), "1", store)
    with pytest.raises(store_mod.BundleError, match="no bundle at"):
        store_mod.fetch(str(other), "9", store)
    assert not any(p.name.startswith(".staging") for p in store.iterdir())  # nothing half-written left behind
