"""What a model file may contain: decided here, never by the bundle, the registry or the MLmodel file.

scikit-learn models are loaded with skops, which builds only the types it is told to trust and refuses a
file holding any other before constructing anything. The list below is what the pipeline's model families
need (include/ml/models.py keeps each family's subset; training refuses a model that needs more, so what
trains can always be served). pickle and cloudpickle files run code while they load, so they are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

# Beyond skops' own defaults (scikit-learn estimators, numpy arrays, builtins).
ALLOWED_SKOPS_TYPES: frozenset[str] = frozenset({
    "numpy.dtype",
    "sklearn.tree._tree.Tree",  # random forests, extra trees
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # histogram gradient boosting
    # Histogram gradient boosting with categorical splits validates its numeric columns with
    # FunctionTransformer(functools.partial(check_array, ...)); skops builds a partial only of trusted functions.
    "functools.partial",
    "sklearn.utils.validation.check_array",
    "serving.features.DatetimeFeatures",  # the parts of a datetime column (serving/features.py)
    # The seeded folds a TargetEncoder is cross-fitted with (plain settings: n_splits, shuffle, random_state).
    "sklearn.model_selection._split.KFold",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.calibration._CalibratedClassifier",  # calibrated classifiers (model.calibration) ...
    "sklearn.calibration._SigmoidCalibration",  # ... with sigmoid calibration
})


class UntrustedModelError(Exception):
    """The model file is not skops, or holds a type outside ALLOWED_SKOPS_TYPES; nothing of it was built."""


def load_sklearn(model_files: Mapping[str, bytes], mlmodel: Mapping[str, Any]) -> Any:
    """The scikit-learn model of an MLflow model directory (`model_files`: its files' bytes, by path relative to
    it, as read once and checked by the loader), built only from trusted types and from those very bytes."""
    import skops.io

    return skops.io.loads(check_model(model_files, mlmodel), trusted=sorted(ALLOWED_SKOPS_TYPES))


def check_model(model_files: Mapping[str, bytes], mlmodel: Mapping[str, Any]) -> bytes:
    """Refuse anything but a skops file of allowed types, reading only its schema (nothing is constructed);
    returns the model file's bytes."""
    import skops.io

    flavor = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    if flavor.get("serialization_format") != "skops":
        raise UntrustedModelError(f"serialization format {flavor.get('serialization_format')!r} is not loaded "
                                  "(it runs code while loading); log the model with serialization_format='skops'")
    name = str(flavor.get("pickled_model", ""))
    if "/" in name or name not in model_files:
        raise UntrustedModelError(f"no model file {flavor.get('pickled_model')!r} in the model directory")
    data = model_files[name]
    untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - ALLOWED_SKOPS_TYPES)
    if untrusted:
        raise UntrustedModelError(f"{name} holds types outside the serving allow-list: {untrusted}")
    return data


def read_model_dir(model_dir: Path) -> dict[str, bytes]:
    """The files of an MLflow model directory on disk, read once (no symlinks), for `load_sklearn`."""
    from serving.store import read_files

    return read_files(model_dir)


def model_files(files: Mapping[str, bytes], directory: str) -> dict[str, bytes]:
    """The files under `directory`/ of a bundle's mapping, by path relative to it."""
    prefix = directory.rstrip("/") + "/"
    return {name[len(prefix):]: data for name, data in files.items() if name.startswith(prefix)}
