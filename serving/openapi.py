"""OpenAPI 3 description of the server, generated from the served model's contract."""

from __future__ import annotations

import csv
import io
from typing import Any, Iterable

import numpy as np

from serving.contract import Contract, Feature
from serving.limits import request_limits
from serving.settings import Settings

_ERROR = {"$ref": "#/components/responses/Error"}


def _feature_schema(feature: Feature, flag: bool = False) -> dict[str, Any]:
    """`flag`: the server accepts values outside a feature's range and flags them (SERVING_OUT_OF_RANGE=flag), so
    the range is a description, not a minimum and maximum."""
    if feature.allowed is not None:
        schema: dict[str, Any] = {"enum": list(feature.allowed)}
        if feature.dtype == "ordinal":
            schema["description"] = "ordered, lowest first: " + " < ".join(map(str, feature.allowed))
    elif feature.is_numeric:
        schema = {"type": "integer" if feature.dtype == "int" else "number"}
        if feature.min is not None or feature.max is not None:
            if flag:
                lo = "-inf" if feature.min is None else f"{feature.min:g}"
                hi = "inf" if feature.max is None else f"{feature.max:g}"
                schema["description"] = f"expected from {lo} to {hi}; a value outside is accepted with a warning"
            else:
                schema |= {key: bound for key, bound in (("minimum", feature.min), ("maximum", feature.max))
                           if bound is not None}
    elif feature.dtype == "datetime":
        schema = _datetime_schema(feature, flag)
    elif feature.dtype == "category":  # an open set: any text or number, a value the model never saw included
        return {"anyOf": [{"type": "string", "nullable": feature.nullable}, {"type": "number"}],
                "description": "a category (any value; one the model never saw is encoded as unknown)"}
    else:
        schema = {"type": "string"}
    if feature.nullable:
        schema["nullable"] = True
    return schema


def _datetime_schema(feature: Feature, flag: bool) -> dict[str, Any]:
    """A datetime feature: ISO 8601 text (what JSON encoders and browsers write), or text in its own strftime
    format, or for unix / unix_ms a number of seconds / milliseconds since 1970. Its min and max are stated in the
    description (JSON Schema has no range for date-time text), and a value outside them is refused like a number
    outside its range (or flagged)."""
    lo, hi = feature.datetime_span()
    bounds = (f"from {feature.min}" if feature.min else "") + (" " if feature.min and feature.max else "") + \
        (f"to {feature.max}" if feature.max else "")
    where = f" ({bounds} UTC{'; a value outside is accepted with a warning' if flag else ''})" if bounds else ""
    if feature.format in ("unix", "unix_ms"):
        unit = "seconds" if feature.format == "unix" else "milliseconds"
        schema: dict[str, Any] = {"type": "number", "description": f"a date-time as {unit} since 1970-01-01 "
                                                                   f"UTC{where}"}
        for key, bound in (("minimum", feature.min), ("maximum", feature.max)):
            if bound is not None and not flag:
                schema[key] = feature.datetime_value(np.datetime64(str(bound)))
    else:
        own = f" or text in the format {feature.format!r}" if feature.format else ""
        schema = {"type": "string", "format": "date-time",
                  "description": f"a date-time: ISO 8601{own}; an offset is converted to UTC, none means UTC{where}"}
    schema["example"] = feature.datetime_value(lo + (hi - lo) // 2)
    return schema


def _csv_line(values: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def _explain_path(security: list[Any], errors: dict[str, Any], prediction_value: dict[str, Any],
                  settings: Settings) -> dict[str, Any]:
    """POST /explain (serving/explaining.py): /invocations' bodies, the champion's predictions and their
    attributions per input column."""
    cap = min(settings.explain_max_rows, settings.max_rows)
    off = "" if settings.explain else "Turned off on this server (SERVING_EXPLAIN=off): every request is answered " \
                                      "404 explain_disabled. "
    number = {"type": "number"}
    per_column = {"type": "object", "additionalProperties": number, "description": "input column -> contribution"}
    explanation = {"type": "object", "required": ["base_value", "contributions"], "properties": {
        "base_value": {"anyOf": [number, {"type": "object", "additionalProperties": number,
                                          "description": "class -> base value"}]},
        "contributions": {"anyOf": [per_column, {"type": "object", "additionalProperties": per_column,
                                                 "description": "class -> input column -> contribution"}]}},
        "description": "Regression: base_value + the sum of contributions == the prediction. Classification: "
                       "per class, base_value[class] + the sum of contributions[class] == the model's output "
                       "for that class, in the space `output` names (probability or log-odds; binary log-odds: "
                       "the positive class only)."}
    return {"post": {
        "summary": "The champion's predictions and why: each row's attributions per input column (TreeSHAP for "
                   "tree models, exact linear attribution for linear ones). One-hot, encoded and date-derived "
                   "columns are summed back to the column sent.",
        "description": off + f"Takes the bodies /invocations takes, at most {cap} rows (SERVING_EXPLAIN_MAX_ROWS; "
                       "above: 413 too_many_rows). 404 explain_disabled: turned off (SERVING_EXPLAIN=off); 404 "
                       "explain_unavailable: the served model cannot be explained (GET /version's `explain` says "
                       "why). Not captured, never answered by a release's candidate.",
        "security": security,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/MlflowRequest"}},
            "text/csv": {"schema": {"type": "string"}}}},
        "responses": {"200": {"description": "Predictions with their explanations, one per row", "content": {
            "application/json": {"schema": {"type": "object", "required": [
                "predictions", "explanations", "output", "calibrated", "classes", "method", "model"], "properties": {
                "predictions": {"type": "array", "items": prediction_value},
                "probabilities": {"type": "array", "items": {"type": "object", "additionalProperties": number}},
                "explanations": {"type": "array", "items": explanation},
                "output": {"type": "string", "enum": ["value", "probability", "log_odds"]},
                "calibrated": {"type": "boolean", "description": "true: a calibrated classifier, whose classifier "
                                                                "before calibration is explained"},
                "classes": {"type": "array", "items": {"type": "string"},
                            "description": "the classes explained ([] for regression)"},
                "method": {"type": "string", "enum": ["tree_shap", "linear"]},
                "model": {"type": "object", "required": ["name", "version"], "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"}}},
                "warnings": {"$ref": "#/components/schemas/Details"}}}}}},
            **errors, "404": _ERROR}}}


def openapi_spec(contract: Contract | None, version: str | None, settings: Settings) -> dict[str, Any]:
    if contract is not None:
        # Key (id) and ignored columns: optional, never model input; a key is recorded with the row in capture.
        extra = {name: {"anyOf": [{"type": "string", "nullable": True}, {"type": "number"}],
                        "description": "the row's id: optional, never a model input; recorded with the row in "
                                       "capture"} for name in contract.keys} | \
                {name: {"description": "a column of the training data the model ignores: optional, dropped"}
                 for name in contract.ignored}
        record: dict[str, Any] = {
            "type": "object", "additionalProperties": False,
            "properties": {**{f.name: _feature_schema(f, settings.out_of_range == "flag") for f in contract.features},
                           **extra},
            "required": [f.name for f in contract.features if not f.nullable]}
        # A header and one valid row: an example the server accepts as it stands.
        csv_example = _csv_line(contract.names) + _csv_line(contract.example_row().values())
        limits = request_limits(settings.max_rows, settings.max_columns, settings.max_values, len(contract.accepted))
        record["maxProperties"] = limits.columns
        columns_max: dict[str, Any] = {"maxItems": limits.columns}
        sizes = (f" A request holds at most {limits.rows} rows (SERVING_MAX_ROWS), {limits.columns} columns in a "
                 f"row or header (SERVING_MAX_COLUMNS) and {limits.values} values in all (SERVING_MAX_VALUES); "
                 "above, the answer is 413, before the body is decoded.")
    else:
        record, csv_example, columns_max, sizes = {"type": "object"}, "", {}, ""
    rows = {"type": "array", "items": {"$ref": "#/components/schemas/Record"}, "minItems": 1,
            "maxItems": settings.max_rows}
    # anyOf, not oneOf: an integer (a class label such as wine quality 6) is also a number, and oneOf would
    # then reject it for matching two alternatives.
    prediction_value = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "integer"}, {"type": "boolean"}]}
    error_statuses = {"400": _ERROR, "413": _ERROR, "415": _ERROR, "422": _ERROR, "503": _ERROR}
    if settings.api_key:
        error_statuses["401"] = _ERROR
    security = [{"apiKey": []}, {"bearer": []}] if settings.api_key else []
    json_ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    paths = {"/explain": _explain_path(security, error_statuses, prediction_value, settings)}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Prediction server", "version": version or "no model loaded",
                 "description": "Predictions from the champion model. Inputs are checked against the schema the "
                                "model was trained with." + sizes},
        "paths": {
            "/invocations": {"post": {
                "summary": "MLflow scoring protocol (clients of `mlflow models serve` work unchanged)",
                "security": security,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/MlflowRequest"}},
                    "text/csv": {"schema": {"type": "string"},
                                 "example": csv_example}}},
                "responses": {"200": {"description": "Predictions, one per row", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["predictions"], "properties": {
                        "predictions": {"type": "array", "items": prediction_value},
                        "warnings": {"$ref": "#/components/schemas/Details"}}}}}}, **error_statuses}}},
            "/predict": {"post": {
                "summary": "One record (object) or a list of records keyed by column name",
                "security": security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [{"$ref": "#/components/schemas/Record"}, rows]}}}},
                "responses": {"200": {"description": "Predictions with the model that made them", "content": {
                    "application/json": {"schema": {"type": "object", "required": ["predictions", "model"],
                                                    "properties": {
                        "predictions": {"type": "array", "items": prediction_value},
                        "model": {"type": "object", "required": ["name", "version"], "properties": {
                            "name": {"type": "string"}, "version": {"type": "string"}}},
                        "probabilities": {"type": "array", "items": {
                            "type": "object", "additionalProperties": {"type": "number"}}},
                        "warnings": {"$ref": "#/components/schemas/Details"}}}}}}, **error_statuses}}},
            **paths,
            "/health": {"get": {"summary": "Liveness", "responses": {"200": json_ok}}},
            "/ready": {"get": {"summary": "Model loaded and a self-check prediction passes",
                               "responses": {"200": json_ok, "503": _ERROR}}},
            "/version": {"get": {"summary": "The served model: name, version, run id, trained at, metrics, "
                                            "schema hash, the release's candidate (version, mode, share) or "
                                            "null, and whether /explain can explain the model (`explain`)",
                                 "responses": {"200": json_ok, "503": _ERROR}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (all workers)", "responses": {"200": {
                "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": json_ok}}},
            "/model-card": {"get": {"summary": "The served model's card: data, metrics, gate decision, intended use",
                                    "responses": {"200": {"description": "HTML page", "content": {"text/html": {
                                        "schema": {"type": "string"}}}}, "404": _ERROR, "503": _ERROR}}},
            "/provenance": {"get": {
                "summary": "The served version's signed provenance: a DSSE envelope (payloadType "
                           "application/vnd.in-toto+json) of an in-toto Statement v1 binding the bundle's files, "
                           "the training data snapshot's sha256, the validation summary, the MLflow run, the code "
                           "commit and the sha256 of requirements.txt",
                "responses": {"200": {"description": "DSSE envelope", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["payloadType", "payload", "signatures"], "properties": {
                        "payloadType": {"type": "string"}, "payload": {"type": "string", "format": "byte"},
                        "signatures": {"type": "array", "items": {"type": "object", "properties": {
                            "keyid": {"type": "string"}, "sig": {"type": "string", "format": "byte"}}}}}}}}},
                    "404": _ERROR, "503": _ERROR}}},
            "/": {"get": {"summary": "A form to try the model", "responses": {"200": {
                "description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        },
        "components": {
            "schemas": {
                "Record": record,
                "Details": {"type": "array", "items": {"type": "object", "properties": {
                    "row": {"type": "integer"}, "field": {"type": "string"}, "problem": {"type": "string"}}}},
                "MlflowRequest": {"type": "object", "properties": {
                    "dataframe_split": {"type": "object", "required": ["columns", "data"], "properties": {
                        "columns": {"type": "array", "items": {"type": "string"}, **columns_max},
                        "data": {"type": "array", "items": {"type": "array"}}}},
                    "dataframe_records": rows,
                    "instances": rows,
                    "inputs": rows,
                    "params": {"type": "object"}},
                    "minProperties": 1},
            },
            "responses": {"Error": {"description": "An error, with the field and row at fault", "content": {
                "application/json": {"schema": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["code", "message", "details"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"},
                        "details": {"type": "array"}}}}}}}}},
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
