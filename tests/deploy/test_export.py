"""Export: a registered MLflow model version becomes a verified bundle in a model store (include/release/export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.release.export import export_bundle, export_to_store
from include.release.signing import LocalSigner
from serving import pointer as pointers
from serving import store
from serving.model import ModelLoadError, load_bundle
from tests.support.signing import sign, signing_config, trusted_keys


def test_export_from_a_real_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlflow.db")  # an earlier module may have set one of its own
    experiment = mlflow.create_experiment("export", artifact_location=(tmp_path / "art").as_uri())
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    model = LinearRegression().fit(x, [0.0, 2.0, 4.0, 6.0])
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metric("test_rmse", 0.25)
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name="exported",
                                        serialization_format="skops", signature=infer_signature(x, model.predict(x)))
    client = mlflow.tracking.MlflowClient()
    client.set_registered_model_alias("exported", "champion", "1")

    signer = LocalSigner(signing_config().private_key)
    bundle = export_bundle("exported", "champion", tmp_path / "store", signer, trusted_keys())
    meta = json.loads((bundle / "bundle.json").read_text())
    assert bundle.name == "1" and meta["version"] == "1" and meta["run_id"] == info.run_id
    assert meta["metrics"] == {"test_rmse": 0.25}
    manifest = store.verify_manifest(bundle)
    assert (manifest.model, manifest.version) == ("exported", "1")  # the signed manifest names them
    assert (bundle / store.MANIFEST).read_text().startswith("# model: exported\n# version: 1\n")
    assert meta["onnx"] == {"converted": True, "reason": ""}
    assert f"  {store.ONNX_MODEL}\n" in (bundle / store.MANIFEST).read_text()  # signed with the rest
    loaded = load_bundle(bundle, trusted_keys())  # MLflow-signature fallback: names and types, no ranges
    assert loaded.engine.name == "onnxruntime", loaded.engine.reason
    assert loaded.contract.names == ("a",) and loaded.predict({"a": [5.0]}).values == pytest.approx([10.0])
    assert export_bundle("exported", "1", tmp_path / "store", signer, trusted_keys()) == bundle  # unchanged
    # Exported again elsewhere (a redeploy, a rollback): the same bytes, its signed provenance statement included,
    # so a server holding version 1 takes it as the same bundle.
    again = export_bundle("exported", "1", tmp_path / "other-store", signer, trusted_keys())
    assert (again / "provenance.json").read_bytes() == (bundle / "provenance.json").read_bytes()
    assert (again / store.MANIFEST).read_bytes() == (bundle / store.MANIFEST).read_bytes()
    with pytest.raises(store.BundleError, match="no version or alias 'nope'"):
        export_bundle("exported", "nope", tmp_path / "store", signer, trusted_keys())


@pytest.mark.parametrize("family, hyperparameters", [
    ("random_forest", {"n_estimators": 5}),
    ("hist_gradient_boosting", {"loss": "poisson", "max_iter": 20}),  # exp(raw): no converter of ours
], ids=["convertible", "not-convertible"])
def test_export_converts_to_onnx_and_signs_it_or_records_why_not(family: str, hyperparameters: dict,
                                                                  tmp_path: Path) -> None:
    """Export writes model.onnx (checked against the model on the rows servers check) before the manifest; a model
    it cannot convert gets none, the reason in bundle.json, and is served by sklearn with that reason."""
    import mlflow

    from tests.support.bundles import _fit_toy, _model_kwargs

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlflow.db")  # an earlier module may have set one of its own
    experiment = mlflow.create_experiment("export", artifact_location=(tmp_path / "art").as_uri())
    pipeline, x, schema, trusted = _fit_toy("regression", 100.0, 5, family, hyperparameters)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(pipeline, name="model", registered_model_name="toy",
                                 **_model_kwargs(pipeline, x, schema, trusted))
    bundle = export_bundle("toy", "1", tmp_path / "store", LocalSigner(signing_config().private_key),
                           trusted_keys())
    recorded = json.loads((bundle / store.METADATA).read_text())["onnx"]
    loaded = load_bundle(bundle, trusted_keys())
    if family == "random_forest":
        assert recorded == {"converted": True, "reason": ""} and (bundle / store.ONNX_MODEL).is_file()
        assert (loaded.engine.name, loaded.engine.reason) == ("onnxruntime", None)
    else:
        assert recorded["converted"] is False and "poisson" in recorded["reason"]
        assert not (bundle / store.ONNX_MODEL).exists()
        assert (loaded.engine.name, loaded.engine.reason) == ("sklearn", recorded["reason"])


@pytest.mark.parametrize("case", ["pickle-format", "extra-trusted-type"])
def test_export_refuses_what_a_registry_writer_slipped_in(case: str, tmp_path: Path) -> None:
    """Someone who can write the registry's artifacts replaces a registered model: export refuses it before
    anything is deserialized or signed, and nothing enters the store."""
    import mlflow
    import yaml

    from tests.support.attacks import pickle_payload, skops_payload
    from tests.support.bundles import register_toy_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlflow.db")  # an earlier module may have set one of its own
    experiment = mlflow.create_experiment("export", artifact_location=(tmp_path / "art").as_uri())
    version = register_toy_model("victim", experiment)
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    location = ModelsArtifactRepository.get_underlying_uri(f"models:/victim/{version}")
    model_dir = Path(location.removeprefix("file://"))
    marker = tmp_path / "marker"
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    (model_dir / mlmodel["flavors"]["sklearn"]["pickled_model"]).unlink()
    if case == "pickle-format":
        (model_dir / "model.pkl").write_bytes(pickle_payload(marker))
        mlmodel["flavors"]["sklearn"].update(pickled_model="model.pkl", serialization_format="pickle")
    else:
        (model_dir / "model.skops").write_bytes(skops_payload(marker))
        mlmodel["flavors"]["sklearn"].update(pickled_model="model.skops",
                                             skops_trusted_types=["numpy.dtype", "tests.support.attacks.Marker"])
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    signer = LocalSigner(signing_config().private_key)
    with pytest.raises(store.BundleError, match=f"victim version {version} is refused"):
        export_bundle("victim", version, tmp_path / "store", signer, trusted_keys())
    assert store.versions(tmp_path / "store") == [] and not marker.exists()


def test_export_activate_writes_a_signed_pointer_and_a_higher_one_each_time(tmp_path: Path) -> None:
    """main.py export --activate and main.py serve: the store's CURRENT is a pointer the pipeline signed."""
    import mlflow

    from tests.support.bundles import register_toy_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlflow.db")  # an earlier module may have set one of its own
    experiment = mlflow.create_experiment("export", artifact_location=(tmp_path / "art").as_uri())
    register_toy_model("served", experiment)
    register_toy_model("served", experiment, offset=100.0)
    models = tmp_path / "store"
    sequences = []
    for version in ("1", "2", "1"):
        assert export_to_store("served", version, models, signing_config(), activate=True).activated
        current = pointers.current(models, trusted_keys())
        assert current is not None and (current.model, current.version) == ("served", version)
        assert current.bundle_sha256 == store.sha256_file(models / version / store.MANIFEST)
        assert pointers.read_applied(models) == pointers.applied(current)  # the store's high-water mark
        sequences.append(current.sequence)
    assert sequences == sorted(sequences) and len(set(sequences)) == 3


def test_a_bundle_whose_signed_manifest_names_no_model_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    from tests.support.bundles import make_bundle

    bundle = make_bundle(tmp_path / "store", "1")
    manifest = bundle / store.MANIFEST
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                                if not line.startswith("#")))  # as exported before signed pointers
    sign(bundle)
    with pytest.raises(ModelLoadError, match="does not name the model and version .* re-export it"):
        load_bundle(bundle, trusted_keys())
