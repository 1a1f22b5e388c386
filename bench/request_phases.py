"""Where a request's CPU goes inside the running prediction server: thread CPU per step, under load.

Starts our server (gunicorn, serving/gunicorn.conf.py, 2 workers) on a bundle with a config that adds, in each
worker, timers around the steps of a request: the whole WSGI call per path, and inside `/invocations` reading the
body, decoding it into the MLflow protocol's rows, validation, the model call (the engine alone beside it) and the
JSON answer. Each timer adds the thread CPU time (`time.thread_time_ns`) its step used; at the end every worker
writes its totals. Then wrk loads `/health`, then single-row `/invocations`, at 16 connections.

Measured in the server, not in a loop: between two requests a worker runs gunicorn, Flask and the kernel's
network code, so each step finds its code and data out of the CPU caches and costs several times what it costs
called repeatedly (docs/benchmarks.md, "Request path, round 3").

    .venv/bin/python -m bench.request_phases --bundle models/1
    .venv/bin/python -m bench.request_phases --bundle models/1 --stub-model   # the model call answered from
                                                                              # a cache: the ratio without it

Each timer reads the thread's CPU clock twice (a system call each), so an instrumented server is slower, more so
on /invocations (more timers) than on /health: compare its steps, not its ratio, with the bench's.
`--stub-model` answers every single-row model call with the first one's answer: what /invocations would cost
if predicting were free.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PROJECT_ROOT, BenchmarkError, free_port
from bench.prediction_server import (
    ProcessGroups,
    dataframe_split,
    http,
    model_columns,
    payload_rows,
    run_wrk,
    server_command,
    server_specs,
    wait_ready,
)

OUT_ENV = "BENCH_PHASES_DIR"
STUB_ENV = "BENCH_PHASES_STUB"
# The gunicorn config of the run: the server's own, plus the timers in each worker.
CONFIG = f"""
exec(open({str(PROJECT_ROOT / "serving" / "gunicorn.conf.py")!r}).read())
_serving_post_worker_init, _serving_worker_exit = post_worker_init, worker_exit


def post_worker_init(worker):
    _serving_post_worker_init(worker)
    import bench.request_phases
    bench.request_phases.instrument()


def worker_exit(server, worker):
    import bench.request_phases
    bench.request_phases.write_totals()
    _serving_worker_exit(server, worker)
"""

_totals: dict[str, list[int]] = {}  # step -> [thread CPU ns, calls]


def _add(step: str, nanoseconds: int) -> None:
    entry = _totals.setdefault(step, [0, 0])
    entry[0] += nanoseconds
    entry[1] += 1


def _timed(owner: Any, name: str, step: str) -> None:
    import functools
    import time

    inner = getattr(owner, name)

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time_ns()
        try:
            return inner(*args, **kwargs)
        finally:
            _add(step, time.thread_time_ns() - started)

    setattr(owner, name, timed)


def instrument() -> None:
    """In a worker, after the app is built: timers around the steps (the names serving/api.py calls)."""
    import time

    import flask

    from serving import api, engine, model, service

    for name, step in (("_body", "read the body"), ("mlflow_json", "decode + MLflow protocol"),
                       ("json_response", "JSON answer (either path)")):
        _timed(api, name, step)
    _timed(service, "validate", "validate")
    _timed(model.LoadedModel, "predict", "model call")
    session_run = engine.OnnxPredictor.predict
    stub = os.environ.get(STUB_ENV) == "1"
    answers: dict[int, Any] = {}

    def predict(self: Any, columns: Any, numeric: Any = None) -> Any:
        if stub and numeric is not None and len(numeric) == 1:
            if id(self) not in answers:
                answers[id(self)] = session_run(self, columns, numeric)
            return answers[id(self)]
        return session_run(self, columns, numeric)

    engine.OnnxPredictor.predict = predict
    _timed(engine.OnnxPredictor, "predict", "  of it: the engine (ONNX Runtime)")
    wsgi = flask.Flask.wsgi_app

    def wsgi_app(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        started = time.thread_time_ns()
        try:
            return wsgi(self, environ, start_response)
        finally:
            _add(f"Flask app, {environ.get('PATH_INFO')}", time.thread_time_ns() - started)

    flask.Flask.wsgi_app = wsgi_app


def write_totals() -> None:
    out = os.environ.get(OUT_ENV)
    if out:
        Path(out, f"phases-{os.getpid()}.json").write_text(json.dumps(_totals))
        _totals.clear()


def wait_for_workers(url: str, workers: int, timeout: float = 180.0) -> None:
    """Until `workers` distinct worker pids have answered /health: each has loaded and checked the model (a worker
    still loading takes a core, which would slow the first run)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise BenchmarkError(f"only {len(seen)} of {workers} workers answered within {timeout:.0f}s")
        status, body = http("GET", url)
        if status == 200:
            seen.add(json.loads(body)["pid"])
        time.sleep(0.05)


def measure(bundle: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    groups = ProcessGroups()
    columns = model_columns(bundle)
    body_file = workdir / "1row.json"
    body_file.write_bytes(dataframe_split(columns, payload_rows(args.config_dir, columns, 1)))
    spec = next(s for s in server_specs(args.workers) if s.key == "ours")
    port = free_port()
    cmd, env = server_command(spec, bundle, port, workdir)
    config = workdir / "gunicorn.phases.py"
    config.write_text(CONFIG)
    cmd[cmd.index("-c") + 1] = str(config)
    env.update({OUT_ENV: str(workdir), STUB_ENV: "1" if args.stub_model else "0"})
    logfile = workdir / "server.log"
    proc = groups.start(cmd, env, logfile)
    runs: dict[str, list[dict[str, Any]]] = {"/health": [], "/invocations": []}
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/ready", logfile)
        wait_for_workers(f"http://127.0.0.1:{port}/health", args.workers)
        for _ in range(args.rounds):
            for path, body in (("/health", None), ("/invocations", body_file)):
                url = f"http://127.0.0.1:{port}{path}"
                runs[path].append(run_wrk(groups, url, body, args.connections, args.duration, workdir, proc.pid))
    finally:
        groups.stop(proc)
    steps: dict[str, list[int]] = {}
    for part in workdir.glob("phases-*.json"):
        for step, (ns, calls) in json.loads(part.read_text()).items():
            entry = steps.setdefault(step, [0, 0])
            entry[0] += ns
            entry[1] += calls
    return {"stub_model": args.stub_model, "runs": runs,
            "steps_us": {step: ns / calls / 1e3 for step, (ns, calls) in steps.items() if calls >= 100}}


ORDER = ("Flask app, /health", "Flask app, /invocations", "read the body", "decode + MLflow protocol", "validate",
         "model call", "  of it: the engine (ONNX Runtime)", "JSON answer (either path)")


def report(result: dict[str, Any]) -> str:
    steps = result["steps_us"]
    lines = ["| step (thread CPU per call, in the server under load) | µs |", "|---|---:|"]
    lines += [f"| {step} | {steps[step]:.1f} |" for step in ORDER if step in steps]
    health = [r["req_per_s"] for r in result["runs"]["/health"]]
    predict = [r["req_per_s"] for r in result["runs"]["/invocations"]]
    ratios = [p / h for h, p in zip(health, predict)]
    lines.append("")
    lines.append(f"req/s: /health {statistics.median(health):,.0f}, 1-row /invocations "
                 f"{statistics.median(predict):,.0f} (median of {len(health)}); ratio per pair "
                 + ", ".join(f"{r:.2f}" for r in ratios) + (" — model call stubbed" if result["stub_model"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.common import DEFAULT_CONFIG_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="an exported bundle (its store holds the key)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="where the request row comes from")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating /health, /invocations runs")
    parser.add_argument("--stub-model", action="store_true", help="answer single-row model calls from a cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from include.ml.configuration import ConfigurationManager

    os.environ.setdefault("SERVING_PUBLIC_KEY",
                          str(ConfigurationManager(args.config_dir, env={}).config.signing.public_key))
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
        result = measure(args.bundle.resolve(), args, Path(tmp))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
