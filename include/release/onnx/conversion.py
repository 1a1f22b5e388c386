"""A fitted sklearn pipeline as an ONNX model that answers as it does, for export to sign into a bundle.

skl2onnx converts the pipeline in double precision (the inputs sklearn receives: float64 numbers, text categories,
a datetime as seconds since 1970 in UTC), with converters of our own where its defaults would change the answers,
it has none, or ONNX Runtime cannot run them:

- SimpleImputer: the fill values as double constants (skl2onnx's Imputer node holds float32 and ORT runs it in
  float only), and a missing category (None, NaN to sklearn) as a text marker no client can send (encoders.py).
- OrdinalEncoder, TargetEncoder, OneHotEncoder: per column, a LabelEncoder from the category's text to its row and a
  lookup of what the fitted encoder itself outputs for that category, for a missing value and for a value it never
  saw (unknown codes, the target mean, an infrequent bucket: the encoder's own answers); a one-hot block as each
  category's column number (encoders.py).
- DatetimeFeatures (serving/features.py): the parts by whole-number arithmetic on the seconds (the calendar by
  Howard Hinnant's days-to-civil algorithm), exact in double; a cyclical part's sine and cosine from a table of the
  transformer's own values (datetimes.py).
- Tree ensembles (random forest, extra trees, histogram gradient boosting): the ai.onnx.ml opset-5 `TreeEnsemble`
  node in double (the opset-3 nodes skl2onnx writes keep float32 leaves and sums, ~3e-6 off for 100 trees). A
  forest compares float32-cast features with double thresholds, as sklearn's trees do (they cast X to float32);
  leaves add up in double. Histogram gradient boosting compares float64 features, as sklearn does; its native
  categorical splits become set-membership (BRANCH_MEMBER) nodes. Asked for raw scores (by the calibration below), a
  boosted classifier gives its decision function instead of probabilities (trees.py).
- CalibratedClassifierCV (model.calibration, one calibrated classifier): the classifier's probabilities or decision
  function, each class's sigmoid or isotonic calibrator, sklearn's normalisation. skl2onnx's converter maps an
  isotonic calibrator's input to the nearest threshold; sklearn (scipy) interpolates between thresholds
  (calibration.py).

`convert_checked` then runs the server's own agreement check (serving.engine.load_predictor: the self-check rows
and generated edge rows, 1e-9 relative for regression, the same labels and probabilities within 1e-6) and gives the
model's bytes only if it passes; otherwise, or if anything in conversion fails, the reason. The estimator itself is
never changed.
"""

from __future__ import annotations

import re
from typing import Any

from include.release.onnx.calibration import convert_calibrated
from include.release.onnx.datetimes import convert_datetime
from include.release.onnx.encoders import convert_imputer, convert_lookup
from include.release.onnx.graph import double_probabilities, same_type_shape, width_shape
from include.release.onnx.trees import convert_trees
from serving.contract import Contract
from serving.engine import NUMERIC_INPUT, SKLEARN, Engine, OnnxPredictor, double_input, load_predictor
from serving.engine import reason as runtime_reason

_OPSETS = {"": 21, "ai.onnx.ml": 3}  # skl2onnx writes up to 3; the graph is then raised to 5 (TreeEnsemble)


def convert_checked(estimator: Any, contract: Contract, check_rows: list[dict[str, Any]],
                    sklearn_predict: Any) -> tuple[bytes | None, OnnxPredictor | None, Engine]:
    """`estimator` as ONNX model bytes, and their predictor, if they agree with `sklearn_predict(columns)` ->
    (values, probabilities) on check_rows plus generated edge rows, as a server checks them; else (None, None, why
    not)."""
    try:
        model_bytes = convert(estimator, contract)
    except Exception as exc:  # noqa: BLE001 - whatever fails here, sklearn serves and the reason is shown
        return None, None, Engine(SKLEARN, reason(exc))
    predictor, chosen = load_predictor(model_bytes, estimator, contract, check_rows, sklearn_predict)
    return (model_bytes if predictor is not None else None), predictor, chosen


def compile_predictor(estimator: Any, contract: Contract, check_rows: list[dict[str, Any]],
                      sklearn_predict: Any) -> tuple[OnnxPredictor | None, Engine]:
    """The ONNX Runtime predictor for `estimator` if it agrees with sklearn (convert_checked), else None and the
    reason."""
    _, predictor, chosen = convert_checked(estimator, contract, check_rows, sklearn_predict)
    return predictor, chosen


def convert(estimator: Any, contract: Contract) -> bytes:
    """The pipeline as a serialized ONNX model: the numeric and datetime features as one input, each text feature
    as one."""
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    for feature in contract.features:
        if not feature.is_numeric and feature.allowed and not all(isinstance(a, str) for a in feature.allowed):
            raise TypeError(f"categorical feature {feature.name!r} has non-text values {list(feature.allowed)[:5]}")
    inputs = [(f.name, DoubleTensorType([None, 1]) if double_input(f) else StringTensorType([None, 1]))
              for f in contract.features]
    onx = to_onnx(estimator, inputs, classifier=contract.task == "classification")
    _one_numeric_input(onx.graph, sum(double_input(f) for f in contract.features))
    # skl2onnx names the graph with a random uuid: a fixed name makes the same model convert to the same bytes,
    # so exporting a version again (a redeploy, a rollback) gives the bundle its servers already hold.
    onx.graph.name = "model"
    return onx.SerializeToString()


def to_onnx(model: Any, inputs: list[tuple[str, Any]], classifier: bool = False) -> Any:
    """A fitted pipeline or transformer as an ONNX model (ModelProto), with our converters: `inputs` are skl2onnx's
    (name, tensor type) pairs, a datetime as a double of seconds since 1970."""
    from skl2onnx import convert_sklearn
    from sklearn import ensemble
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, TargetEncoder

    from serving.features import DatetimeFeatures

    forests = (ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier, ensemble.HistGradientBoostingClassifier)
    trees = {cls: convert_trees for cls in (*forests, ensemble.RandomForestRegressor, ensemble.ExtraTreesRegressor,
                                             ensemble.HistGradientBoostingRegressor)}
    encoders = {cls: convert_lookup for cls in (OrdinalEncoder, TargetEncoder, OneHotEncoder)}
    shapes = {**{cls: double_probabilities for cls in (*forests, CalibratedClassifierCV)},
              SimpleImputer: same_type_shape,
              **{cls: width_shape for cls in (OrdinalEncoder, TargetEncoder, OneHotEncoder, DatetimeFeatures)}}
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if classifier else None
    onx = convert_sklearn(model, initial_types=inputs, target_opset=_OPSETS, options=options,
                          custom_conversion_functions={SimpleImputer: convert_imputer, **trees, **encoders,
                                                       DatetimeFeatures: convert_datetime,
                                                       CalibratedClassifierCV: convert_calibrated},
                          custom_shape_calculators=shapes)
    for opset in onx.opset_import:
        if opset.domain == "ai.onnx.ml":
            # TreeEnsemble needs 5. The other ai.onnx.ml ops skl2onnx writes mean the same at 5; the agreement
            # check would catch one that did not.
            opset.version = 5
    # skl2onnx lists the opsets from a set, in an order that changes with PYTHONHASHSEED: sorted, the same model
    # converts to the same bytes in every process (a re-export must give the bundle its servers already hold).
    opsets = sorted(onx.opset_import, key=lambda opset: opset.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    return onx


def _one_numeric_input(graph: Any, features: int) -> None:
    """Feed the numeric features as one [n, k] tensor, split back into skl2onnx's per-feature inputs: a session
    run costs per input (one row of the default forest: 23 -> 11 µs with 11 features). skl2onnx's first step is
    usually a Concat of exactly those inputs, which then goes (its output is the new input itself)."""
    from onnx import TensorProto, helper

    numeric = [i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.DOUBLE]
    if not numeric:
        return
    if len(numeric) != features:
        raise ValueError(f"the converted model has {len(numeric)} numeric inputs for {features} numeric features")
    for node in list(graph.node):
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if node.op_type == "Concat" and list(node.input) == numeric and axis in (1, -1) \
                and node.output[0] not in {output.name for output in graph.output}:
            graph.node.remove(node)
            for other in graph.node:
                other.input[:] = [NUMERIC_INPUT if x == node.output[0] else x for x in other.input]
    if any(x in numeric for node in graph.node for x in node.input):
        graph.node.insert(0, _split(numeric))
    kept = [i for i in graph.input if i.name not in numeric]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.DOUBLE, [None, len(numeric)]),
                        *kept])


def _split(outputs: list[str]) -> Any:
    """The node giving each of `outputs` one column of NUMERIC_INPUT. One feature needs no Split (skl2onnx writes
    the lowest opset its nodes need, and Split takes num_outputs only from opset 18: a lone LinearRegression's graph
    is older)."""
    from onnx import helper

    if len(outputs) == 1:
        return helper.make_node("Identity", [NUMERIC_INPUT], outputs)
    return helper.make_node("Split", [NUMERIC_INPUT], outputs, axis=1, num_outputs=len(outputs))


def reason(exc: Exception) -> str:
    """Why a pipeline is not converted, in a line: a step skl2onnx has no converter for is named."""
    if type(exc).__name__ in ("MissingShapeCalculator", "MissingConverter"):
        step = re.search(r"for type '<class '([^']+)'>'", str(exc))
        return f"no ONNX converter for the pipeline step {step.group(1) if step else '?'}"
    return runtime_reason(exc)
