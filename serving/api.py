"""HTTP endpoints. Predictions: POST /invocations (MLflow scoring protocol) and POST /predict (plain records)."""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

from flask import Blueprint, Response, current_app, g, render_template, request

from serving import explaining
from serving.body import InputError, csv_rows, mlflow_json, parse_json
from serving.contract import Contract
from serving.inputs import Batch
from serving.limits import Limits
from serving.model import LoadedModel, Prediction
from serving.openapi import openapi_spec
from serving.release import routing_key
from serving.responses import error_response, json_response, public_text
from serving.service import Service

log = logging.getLogger(__name__)
bp = Blueprint("serving", __name__)
PROTECTED = {"serving.invocations", "serving.predict", "serving.explain"}


def service() -> Service:
    return current_app.extensions["serving"]


@bp.before_request
def require_api_key() -> Response | None:
    key = service().settings.api_key
    if not key or request.endpoint not in PROTECTED:
        return None
    given = request.headers.get("X-API-Key") or ""
    auth = request.headers.get("Authorization", "")
    if not given and auth.startswith("Bearer "):
        given = auth[len("Bearer "):]
    if hmac.compare_digest(given.encode(), key.encode()):
        return None
    return error_response(401, "unauthorized", "missing or wrong API key (X-API-Key header or Bearer token)",
                          headers={"WWW-Authenticate": 'Bearer realm="prediction"'})


def _body() -> bytes:
    length, limit = request.content_length, request.max_content_length
    if length is not None and limit is not None and length <= limit:
        return request.environ["wsgi.input"].read(length)  # one read: werkzeug's stream reads chunk by chunk
    return request.get_data(cache=False)  # chunked, or over MAX_CONTENT_LENGTH: werkzeug answers 413 unread


def _limits(svc: Service) -> Limits:
    """The served model's request limits: its width sets the columns and values a body may hold (no model: 503)."""
    return svc.limits(svc.model().contract)


def _require_json() -> None:
    if request.mimetype != "application/json":
        raise InputError(415, "unsupported_media_type",
                         f"expected Content-Type application/json, got {request.mimetype or 'none'}")


def invocation_rows(svc: Service) -> tuple[Any, bool]:
    """The rows of an MLflow scoring protocol body (JSON or CSV), checked against the request limits, and whether
    they came as text (CSV); /invocations and /explain take the same bodies."""
    mimetype = request.mimetype
    if mimetype in ("text/csv", "application/csv"):
        return csv_rows(_body(), _limits(svc)), True
    if mimetype == "application/json":
        return mlflow_json(_body(), _limits(svc)), False
    raise InputError(415, "unsupported_media_type", f"expected application/json or text/csv, got {mimetype or 'none'}")


@bp.post("/invocations")
def invocations() -> Response:
    svc = service()
    rows, from_text = invocation_rows(svc)
    model, batch, prediction = _serve(svc, rows, from_text)
    body: dict[str, Any] = {"predictions": prediction.values}
    if batch.warnings:
        body["warnings"] = batch.warnings
    return json_response(body, headers=_model_headers(model))


@bp.post("/predict")
def predict() -> Response:
    _require_json()
    svc = service()
    model, batch, prediction = _serve(svc, parse_json(_body(), _limits(svc)), False)
    body: dict[str, Any] = {"predictions": prediction.values, "model": {"name": model.name, "version": model.version}}
    if prediction.probabilities is not None:
        body["probabilities"] = prediction.probabilities
    if batch.warnings:
        body["warnings"] = batch.warnings
    return json_response(body, headers=_model_headers(model))


@bp.post("/explain")
def explain() -> Response:
    """The champion's predictions for an /invocations body and why: each row's attributions per input column
    (serving/explaining.py). Not routed to a release's candidate, not captured."""
    svc = service()
    try:
        explainer = explaining.explainer_of(svc.settings, model := svc.model())
    except explaining.Unexplained as exc:
        return error_response(404, exc.code, exc.message)
    try:
        rows, from_text = invocation_rows(svc)
    except InputError as exc:
        raise explaining.capped(exc, svc.settings) from None
    return json_response(explaining.explain(svc, model, explainer, rows, from_text), headers=_model_headers(model))


def _serve(svc: Service, rows: Any, from_text: bool) -> tuple[LoadedModel, Batch, Prediction]:
    """The answer of the model the request is routed to (serving/release.py), captured."""
    key = routing_key(request.headers.get(svc.settings.sticky_header), g.request_id)
    answered = svc.serve(rows, g.request_id, key, from_text)
    return answered.model, answered.batch, answered.prediction


def _model_headers(model: LoadedModel) -> dict[str, str]:
    """Which model answered, on every prediction (the MLflow protocol's body has no room for it)."""
    return {"X-Model-Name": model.name, "X-Model-Version": model.version}


@bp.get("/health")
def health() -> Response:
    return json_response({"status": "ok", "pid": os.getpid()})


@bp.get("/ready")
def ready() -> Response:
    svc = service()
    model = svc.holder.current
    if model is None:
        return error_response(503, "model_not_ready", "no model loaded", [_public_refusal(svc.holder.refused)]
                              if svc.holder.refused else [], headers={"Retry-After": "5"})
    try:
        model.self_check()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        log.error("model %s failed its self-check: %s", model.version, exc)
        return error_response(503, "self_check_failed", public_text(f"the model failed its self-check: {exc}"))
    return json_response({"status": "ready", "version": model.version})


@bp.get("/version")
def version() -> Response:
    svc = service()
    model = svc.model()
    release = svc.holder.release
    return json_response({**model.describe(), "candidate": release.describe() if release else None,
                          "refused": _public_refusal(svc.holder.refused),
                          "explain": explaining.status(svc.settings, model), "pid": os.getpid()})


def _public_refusal(refused: dict[str, str] | None) -> dict[str, str] | None:
    """The last refused version and why, with no path of this host (the server log has the whole message)."""
    return None if refused is None else {key: public_text(value) for key, value in refused.items()}


@bp.get("/metrics")
def metrics() -> Response:
    return Response(service().metrics.exposition(), mimetype="text/plain; version=0.0.4")


@bp.get("/openapi.json")
def openapi() -> Response:
    model = service().holder.current
    return json_response(openapi_spec(model.contract if model else None, model.version if model else None,
                                      service().settings))


@bp.get("/model-card")
def model_card() -> Response:
    model = service().model()
    if model.card_html is None:
        return error_response(404, "no_model_card", f"{model.name} version {model.version} has no model card: its "
                                                    "bundle was exported before model cards existed")
    return Response(model.card_html, mimetype="text/html")  # sandboxed by its CSP (serving/headers.py)


@bp.get("/provenance")
def provenance() -> Response:
    """The served version's signed provenance statement (a DSSE envelope of an in-toto Statement), as exported."""
    model = service().model()
    if model.provenance is None:
        return error_response(404, "no_provenance", f"{model.name} version {model.version} has no provenance "
                                                    "statement: its bundle was exported before they existed")
    return Response(model.provenance, mimetype="application/json")


@bp.get("/")
def index() -> str:
    model = service().holder.current
    contract = model.contract if model else None
    return render_template("index.html", model=model, features=contract.features if contract else (),
                           defaults=_form_defaults(contract) if contract else {},
                           keys=contract.keys if contract else (), ignored=contract.ignored if contract else (),
                           auth=bool(service().settings.api_key), explain=service().settings.explain)


def _form_defaults(contract: Contract) -> dict[str, Any]:
    """The form's first values: the contract's example row, a datetime as a datetime-local input takes it."""
    row = contract.example_row()
    for feature in contract.features:
        if feature.dtype == "datetime":
            lo, hi = feature.datetime_span()
            row[feature.name] = str(lo + (hi - lo) // 2)  # ISO 8601 to the second, no offset
    return row

