"""Prediction server benchmark: our gunicorn server vs `mlflow models serve` and MLServer, same model, same payloads.

For each model (by default the pipeline's default champion, params.yaml as shipped, and a
HistGradientBoosting champion), it

1. trains the champion with `main.py --config-dir D` into a throw-away workspace (temporary
   config dir, SQLite MLflow store, artifacts), and exports it with
   `python main.py export --store S --activate` (or takes an existing bundle: --bundle);
2. times the in-process predict two ways: the model's own (stock MLflow pyfunc / scikit-learn
   predict on a DataFrame) and our server's model path (`serving.model.load_bundle(b).predict`);
3. starts, one at a time, each server on that bundle, each in its own process group:
   - `mlflow models serve -m <bundle>/model --env-manager local` with its defaults (1 worker),
   - the same with `-w N` (our worker count),
   - ours: `gunicorn -c serving/gunicorn.conf.py` with SERVING_* env (defaults: micro-batching on),
   - MLServer 1.7.1 (sklearn runtime, adaptive batching, our worker count as parallel workers) from its own
     virtualenv bench/.mlserver-venv, built on first use from bench/mlserver-requirements.txt, fed the same
     rows in the V2 inference protocol; its in-process mode if its parallel workers fail to start;
   - ours with SERVING_BATCHING=0;
4. drives each with wrk (1 thread, N connections, a Lua script POSTing the body) on
   /invocations with the same MLflow `dataframe_split` payloads: 1 row and 100 rows; and our /health
   at the same concurrency, the server's own floor, alternating with 1-row /invocations (--floor-rounds pairs);
5. sends single-row requests at a constant rate of half of the server's own measured
   maximum (an open-loop generator: latency counts from the scheduled send time, so a
   stalled server cannot hide queueing, as wrk2 does) for p99 at half load.

It prints one table (req/s, rows/s, p50, p99 and our/their ratios) and the targets, and writes
the raw results as JSON to bench/results/. This is a benchmark, not a test; it takes ~10 minutes on 2 cores.
The load generator shares the machine's cores with the servers; each row records the CPU the
server, wrk and other processes used meanwhile.

    .venv/bin/python -m bench.prediction_server                       # rf and hgb, 16 connections
    .venv/bin/python -m bench.prediction_server --models rf --duration 10
    .venv/bin/python -m bench.prediction_server --bundle rf=models/1  # an existing bundle, no training
    .venv/bin/python -m bench.prediction_server --report bench/results/serving-<ts>.json

Needs wrk (Debian: `apt-get install -y wrk`). Ctrl-C stops every server it started.

The code: processes.py (process groups), load.py (load drivers: wrk, the open-loop generator), servers.py (the
servers as commands), models.py (training, payloads, in-process timing), report.py (targets and tables), run.py
(one run, the command line). Other benchmarks reuse the helpers this package exports.
"""

from bench.prediction_server.load import http, open_loop, run_wrk
from bench.prediction_server.models import dataframe_split, model_columns, payload_rows, train_and_export
from bench.prediction_server.processes import ProcessGroups
from bench.prediction_server.servers import ServerSpec, server_command, server_specs, wait_ready

__all__ = ["ProcessGroups", "ServerSpec", "dataframe_split", "http", "model_columns", "open_loop", "payload_rows",
           "run_wrk", "server_command", "server_specs", "train_and_export", "wait_ready"]
