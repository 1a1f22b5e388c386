"""POST /explain's answer and /version's `explain` entry: per-row attributions of the served model's predictions.

The explainer itself is serving/explain.py (TreeSHAP for tree families, exact linear attribution for linear ones);
LoadedModel.explainer() builds it once per loaded bundle, on first use. Here: the request's rows checked as
/invocations checks them, with a row cap of their own (SERVING_EXPLAIN_MAX_ROWS: an explanation costs far more than a
prediction), then the estimator's predictions and their explanations. Nothing here is captured as traffic: an
explanation is a question about the model, not a prediction the monitor should count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from serving.body import InputError
from serving.explain import VALUE
from serving.inputs import validate
from serving.model import LoadedModel
from serving.responses import public_text
from serving.service import Service
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.explain import Explainer

DISABLED = "explanations are turned off on this server (SERVING_EXPLAIN=off)"


class Unexplained(Exception):
    """The route cannot answer (turned off, or the served model cannot be explained): 404 with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def row_cap(settings: Settings) -> int:
    """The most rows one /explain request may hold: SERVING_EXPLAIN_MAX_ROWS, never above SERVING_MAX_ROWS."""
    return min(settings.explain_max_rows, settings.max_rows)


def status(settings: Settings, model: LoadedModel) -> dict[str, Any]:
    """/version's `explain`: {"available": true, "method", "output", "calibrated", "classes", "built", "max_rows"},
    or {"available": false, "reason"}. Asking builds nothing a model can be explained with: an explainer holds a
    copy of every tree (tens of MB for a large forest), which a worker pays for on its first /explain only."""
    if not settings.explain:
        return {"available": False, "reason": DISABLED}
    from serving.explain import ExplainError, plan

    try:
        explainer = model.explainer(build=False)
        described = plan(model.estimator).describe()
    except ExplainError as exc:
        return {"available": False, "reason": _unavailable(model, exc)}
    return {**described, "available": True, "built": explainer is not None, "max_rows": row_cap(settings)}


def explainer_of(settings: Settings, model: LoadedModel) -> Explainer:
    """The served model's explainer, or Unexplained (turned off, or the model cannot be explained)."""
    if not settings.explain:
        raise Unexplained("explain_disabled", DISABLED)
    from serving.explain import ExplainError

    try:
        explainer = model.explainer()
    except ExplainError as exc:
        raise Unexplained("explain_unavailable", _unavailable(model, exc)) from None
    assert explainer is not None
    return explainer


def explain(svc: Service, model: LoadedModel, explainer: Explainer, rows: Any, from_text: bool) -> dict[str, Any]:
    """The body of /explain's answer for `rows` (as parsed from an /invocations body) by `model` (the champion).
    Raises InputError (the client's rows)."""
    settings = svc.settings
    cap = row_cap(settings)
    try:
        batch = validate(rows, model.contract, max_rows=cap, out_of_range=settings.out_of_range,
                         from_text=from_text, max_columns=svc.limits(model.contract).columns)
    except InputError as exc:
        raise capped(exc, settings) from None
    explanations = explainer.explain(batch.columns)
    # The estimator's predictions, which the explanation is of (base value + contributions add up to them); the
    # ONNX model /invocations may be served by agrees with them to the tolerances it was checked to at load. A
    # regressor's is the explanation's own sum (the estimator's prediction to rounding; predicting again would
    # cost a fully grown forest as much CPU as explaining one row).
    if explanations.output == VALUE:
        values, probabilities = explanations.values[:, 0], None
    else:
        values, probabilities = model.sklearn_predict(batch.columns)
    body: dict[str, Any] = {"predictions": np.asarray(values).tolist()}
    if probabilities is not None:
        classes = [str(c) for c in model.estimator.classes_]
        body["probabilities"] = [dict(zip(classes, row)) for row in np.asarray(probabilities).tolist()]
    body |= {"explanations": explanations.rows(), "output": explanations.output,
             "calibrated": explanations.calibrated, "classes": list(explanations.classes),
             "method": explainer.method, "model": {"name": model.name, "version": model.version}}
    if batch.warnings:
        body["warnings"] = batch.warnings
    return body


def capped(exc: InputError, settings: Settings) -> InputError:
    """An /explain request's refusal: a too_many_rows one names /explain's own cap; any other is as it was."""
    if exc.code != "too_many_rows":
        return exc
    cap = row_cap(settings)
    return InputError(413, "too_many_rows", f"too many rows for /explain: it explains at most {cap} rows per request "
                                            "(SERVING_EXPLAIN_MAX_ROWS raises it, up to SERVING_MAX_ROWS)",
                      exc.details)


def _unavailable(model: LoadedModel, exc: Exception) -> str:
    return public_text(f"{model.name} version {model.version} cannot be explained: {exc}")
