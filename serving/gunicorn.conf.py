"""gunicorn settings for the prediction server, from the SERVING_* variables (serving/settings.py).

    gunicorn -c serving/gunicorn.conf.py        (from the directory holding serving/)
"""

import logging
import logging.handlers
import os
import queue
import shutil
import tempfile

from serving import request_heads
from serving import workers as workers_mod
from serving.settings import Settings

_settings = Settings.from_env()
wsgi_app = "serving.app:create_app()"
bind = _settings.bind
workers = _settings.workers
threads = _settings.threads
# gthread, new connections spread evenly (serving/workers.py), request heads read without a thread: a slow client
# holds none, and is dropped (408) after SERVING_HEAD_TIMEOUT seconds (serving/request_heads.py).
worker_class = "serving.workers.BalancedThreadWorker"
request_heads.configure(_settings.head_timeout)
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
accesslog = _settings.access_log or None
logger_class = "serving.access_log.AccessLogger"  # gunicorn's lines, cheaper to build (serving/access_log.py)
loglevel = _settings.log_level
proc_name = "prediction-server"
# No control socket (gunicorn 25.1+ opens one by default at $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl:
# one path for every gunicorn a user runs, so a second server on the host would take over the first one's). The
# server is driven by signals and its unit; `gunicornc` is not needed.
control_socket_disable = True

# One OpenMP (and OpenBLAS) thread per worker: parallelism comes from the workers and micro-batching.
# Otherwise every HistGradientBoosting predict starts a team of threads that wait on each other
# whenever the box is busy (one row: ~5 ms with 1 thread, 40+ ms with 2 on a loaded 2-core box;
# docs/benchmarks.md). Set in the master, before any worker imports scikit-learn.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Workers write their metrics here so /metrics can sum them; a fresh directory per server start.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prediction-server-metrics-")


def on_starting(server):
    workers_mod.create_counts()
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(metrics_dir, ignore_errors=True)  # samples of a previous run must not be summed in
    os.makedirs(metrics_dir, exist_ok=True)


def pre_fork(server, worker):
    workers_mod.assign_slot(worker, list(server.WORKERS.values()))


def post_fork(server, worker):
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")


def post_worker_init(worker):
    # Access-log lines to stdout/stderr are written by a thread of their own: a slow sink (a full
    # journald pipe, a disk flush) then holds that thread, not the request threads waiting on the
    # handler's lock. In one bench run this removed 30-60 ms stalls (docs/benchmarks.md).
    # A log file keeps gunicorn's own handler, which USR1 reopens for log rotation.
    access = logging.getLogger("gunicorn.access")
    if access.handlers and all(type(h) is logging.StreamHandler for h in access.handlers):
        lines = queue.SimpleQueue()
        worker.access_log_writer = logging.handlers.QueueListener(lines, *access.handlers)
        access.handlers = [logging.handlers.QueueHandler(lines)]
        worker.access_log_writer.start()


def worker_exit(server, worker):
    # Graceful stop, max-requests restart, reload, or SIGQUIT: the captured rows still queued are written and
    # the capture files closed (serving/capture.py) before the worker is gone.
    app = getattr(worker, "wsgi", None)
    if app is not None and "serving" in getattr(app, "extensions", {}):
        from serving.app import shutdown

        shutdown(app)
    writer = getattr(worker, "access_log_writer", None)
    if writer is not None:
        writer.stop()  # writes every line still queued


def child_exit(server, worker):
    from prometheus_client import multiprocess

    workers_mod.release_slot(worker)
    multiprocess.mark_process_dead(worker.pid)
