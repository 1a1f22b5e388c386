"""Application factory: `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import msgspec
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving.batching import MicroBatcher, StaleContract
from serving.inputs import Batch, InputError, validate
from serving.metrics import Metrics
from serving.model import LoadedModel, ModelHolder, Prediction
from serving.settings import Settings

log = logging.getLogger(__name__)


class NoModel(Exception):
    """No model has been loaded yet (answered 503)."""


@dataclass
class Service:
    """What the request handlers share within one worker."""

    settings: Settings
    holder: ModelHolder
    metrics: Metrics
    batcher: MicroBatcher | None

    def model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            raise NoModel()
        return model

    def predict(self, records: Any, from_text: bool = False) -> tuple[LoadedModel, Batch, Prediction]:
        """Validate against the served model's contract, then predict (batched with others when small)."""
        for _ in range(3):  # a swap to a model with other inputs between the two steps: validate again
            model = self.model()
            batch = validate(records, model.contract, max_rows=self.settings.max_rows,
                             out_of_range=self.settings.out_of_range, from_text=from_text)
            if self.batcher is not None and batch.n_rows < self.settings.batch_max_rows:
                try:
                    model, prediction = self.batcher.predict(batch)
                except StaleContract:
                    continue
            else:
                prediction = model.predict(batch.columns)
                self.metrics.batch_rows.observe(batch.n_rows)
            self.metrics.predictions.labels(model.name, model.version).inc(batch.n_rows)
            return model, batch, prediction
        raise NoModel()


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """`test_config` overrides Settings fields (e.g. {"model_store": path, "poll_seconds": 0})."""
    settings = Settings.from_env(overrides=test_config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    metrics = Metrics()
    holder = ModelHolder(settings.model_store.resolve(),
                         on_event=lambda version, outcome: metrics.model_loads.labels(version, outcome).inc())
    holder.refresh()
    if holder.current is None:
        log.warning("no model yet in %s (CURRENT pointer missing or refused); /ready answers 503 until one loads",
                    holder.store_dir)
    if settings.poll_seconds > 0:
        holder.watch(settings.poll_seconds)
    batcher = None
    if settings.batching:
        batcher = MicroBatcher(lambda: holder.current, settings.batch_max_rows, settings.batch_max_wait_ms / 1000,
                               on_batch=metrics.batch_rows.observe)
    app.extensions["serving"] = Service(settings, holder, metrics, batcher)

    from serving.api import bp

    app.register_blueprint(bp)
    _register_error_handlers(app)
    _register_metrics_hooks(app, metrics)
    return app


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, code: str, message: str, details: list[Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message, "details": details or []}}, status, headers)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InputError)
    def input_error(exc: InputError) -> Response:
        return json_response(exc.to_dict(), exc.status)

    @app.errorhandler(NoModel)
    def no_model(exc: NoModel) -> Response:
        return error_response(503, "model_not_ready", "no model is loaded yet; see GET /ready",
                              headers={"Retry-After": "5"})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name or "error")
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error; the server log has the details")


def _register_metrics_hooks(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        # The route pattern, not the raw path, so random URLs cannot blow up label cardinality.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response
