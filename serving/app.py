"""Application factory: `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`."""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import headers
from serving.api import bp
from serving.batching import MicroBatcher
from serving.body import InputError, decoders
from serving.capture import CaptureWriter, request_id
from serving.metrics import Metrics
from serving.model import ModelHolder
from serving.release import Scorer
from serving.responses import error_response, json_response
from serving.service import NoModel, Service
from serving.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """`test_config` overrides Settings fields (e.g. {"model_store": path, "poll_seconds": 0})."""
    settings = Settings.from_env(overrides=test_config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    metrics = Metrics(settings.capture_dir)
    trusted = settings.trusted_keys()
    if not trusted:
        log.error("SERVING_PUBLIC_KEY is not set: no bundle can be verified, so none will be served")
    holder = ModelHolder(settings.model_store.resolve(), trusted, on_event=metrics.model_event,
                         model_name=settings.model_name)
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
    # create_app runs in each gunicorn worker after the fork (no preload), so the writer thread is the worker's own.
    capture = None
    if settings.capture_dir is not None:
        try:
            capture = CaptureWriter(settings.capture_dir.resolve(), sample=settings.capture_sample,
                                    max_fill=settings.capture_max_fill, rotate_bytes=settings.capture_rotate_bytes,
                                    rotate_seconds=settings.capture_rotate_seconds,
                                    queue_rows=settings.capture_queue_rows, counters=metrics.capture_counters())
        except OSError as exc:
            raise SettingsError(f"SERVING_CAPTURE_DIR={settings.capture_dir} cannot be used: {exc}") from exc
    service = Service(settings, holder, metrics, batcher, capture)
    # a worker's scorer thread is idle until the store's pointer names a release (serving/release.py)
    service.scorer = Scorer(service.validate, metrics.release, capture, settings.release_queue)
    if holder.current is not None:  # the typed body decoders of its limits, built now rather than on a request
        decoders(service.limits(holder.current.contract))
    app.extensions["serving"] = service
    app.register_blueprint(bp)
    _register_request_id(app)
    _register_error_handlers(app)
    _register_metrics_hooks(app, metrics)
    headers.register(app)
    return app


def shutdown(app: Flask) -> None:
    """Stop the worker's threads: write every captured row still queued, stop following the store
    (gunicorn.conf.py's worker_exit; tests)."""
    app.extensions["serving"].close()


def _register_request_id(app: Flask) -> None:
    """Every response carries X-Request-ID: the client's own when it is safe, else a new one (capture records it)."""
    @app.before_request
    def take_request_id() -> None:
        g.request_id = request_id(request.headers.get("X-Request-ID"))

    @app.after_request
    def give_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or request_id(None)
        return response


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
