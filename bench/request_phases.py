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
    .venv/bin/python -m bench.request_phases --bundle models/1 --before /tmp/old-tree --repeats 3
        # the same, alternating a server of another checkout (e.g. `git worktree add /tmp/old-tree main`) and of
        # this one, --repeats times each: before and after in one run, side by side

The server of a tree runs that tree's code (cwd and PYTHONPATH), with that tree's bench/request_phases.py
timers: compare trees whose serving/api.py calls `_body`, `mlflow_json` and `json_response` and whose
serving/service.py calls `validate` (every tree since the timers were added).

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
# The gunicorn config of the run: the tree's own, plus the timers in each worker.
CONFIG = """
exec(open({conf!r}).read())
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


def measure(bundle: Path, args: argparse.Namespace, workdir: Path, tree: Path = PROJECT_ROOT) -> dict[str, Any]:
    """One server of `tree`'s code, its steps and its req/s."""
    groups = ProcessGroups()
    columns = model_columns(bundle)
    body_file = workdir / "1row.json"
    body_file.write_bytes(dataframe_split(columns, payload_rows(args.config_dir, columns, 1)))
    spec = next(s for s in server_specs(args.workers) if s.key == "ours")
    port = free_port()
    cmd, env = server_command(spec, bundle, port, workdir)
    config = workdir / "gunicorn.phases.py"
    config.write_text(CONFIG.format(conf=str(tree / "serving" / "gunicorn.conf.py")))
    cmd[cmd.index("-c") + 1] = str(config)
    env.update({OUT_ENV: str(workdir), STUB_ENV: "1" if args.stub_model else "0", "PYTHONPATH": str(tree)})
    logfile = workdir / "server.log"
    proc = groups.start(cmd, env, logfile, cwd=tree)
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


def side_by_side(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Medians of the alternating runs of two trees, each run's figure after them."""
    def rates(result: dict[str, Any], path: str) -> float:
        return statistics.median(r["req_per_s"] for r in result["runs"][path])

    rows = [("1-row /invocations, req/s", lambda r: rates(r, "/invocations"), 0),
            ("/health, req/s", lambda r: rates(r, "/health"), 0),
            *((f"{step.strip()} (µs)", lambda r, s=step: r["steps_us"].get(s, float("nan")), 1) for step in ORDER)]
    lines = ["| | before | after | runs before / after |", "|---|---:|---:|---|"]
    for label, value, digits in rows:
        old, new = [value(r) for r in before], [value(r) for r in after]
        lines.append(f"| {label} | {statistics.median(old):,.{digits}f} | {statistics.median(new):,.{digits}f} | "
                     + ", ".join(f"{v:,.{digits}f}" for v in old) + " / "
                     + ", ".join(f"{v:,.{digits}f}" for v in new) + " |")
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
    parser.add_argument("--before", type=Path, help="another checkout: its server and this one's, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="with --before: servers of each tree, alternating")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from include.ml.configuration import ConfigurationManager

    os.environ.setdefault("SERVING_PUBLIC_KEY",
                          str(ConfigurationManager(args.config_dir, env={}).config.signing.public_key))
    if args.before is None:
        with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
            result = measure(args.bundle.resolve(), args, Path(tmp))
        print(report(result))
        return 0
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i in range(args.repeats):
        for label, tree in (("before", args.before.resolve()), ("after", PROJECT_ROOT)):
            with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
                results[label].append(measure(args.bundle.resolve(), args, Path(tmp), tree))
            logging.info("%s %d/%d (%s): %s", label, i + 1, args.repeats, tree,
                         report(results[label][-1]).splitlines()[-1])
    print(side_by_side(results["before"], results["after"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
