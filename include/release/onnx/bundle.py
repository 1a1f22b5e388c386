"""model.onnx in a bundle being exported: converted, checked as every server will check it, and written before the
manifest so the signature covers it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from include.release.onnx.conversion import convert_checked
from serving import store
from serving.contract import Contract
from serving.engine import sklearn_predictor
from serving.model import _single_threaded, self_check_rows
from serving.trust import load_sklearn, read_model_dir

log = logging.getLogger(__name__)


def write_model_onnx(bundle: Path) -> dict[str, Any]:
    """Convert the model of a staged (not yet signed) bundle to ONNX and write <bundle>/model.onnx if it answers as
    the model on the rows a server checks (the self-check rows and edge rows). Returns bundle.json's "onnx" record:
    {"converted": True, "reason": ""}, or converted False with why (sklearn then serves, and says so)."""
    model_files = read_model_dir(bundle / store.MODEL_DIR)
    mlmodel = yaml.safe_load(model_files["MLmodel"])
    contract = Contract.from_mlmodel(mlmodel)
    estimator = load_sklearn(model_files, mlmodel)  # what a server loads, with its allow-list
    _single_threaded(estimator)
    model_bytes, _, chosen = convert_checked(estimator, contract, self_check_rows(model_files, mlmodel, contract),
                                             sklearn_predictor(estimator, contract))
    if model_bytes is None:
        log.warning("%s: no model.onnx, sklearn will serve it: %s", bundle.name, chosen.reason)
        return {"converted": False, "reason": chosen.reason or "not converted"}
    target = bundle / store.ONNX_MODEL
    target.write_bytes(model_bytes)
    os.chmod(target, 0o644)  # a server may run as another user than the exporter
    return {"converted": True, "reason": ""}
