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
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import gc
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    DEFAULT_CONFIG_DIR,
    PROJECT_ROOT,
    RESULTS_DIR,
    BenchmarkError,
    busy_cpu_seconds,
    free_port,
    machine_facts,
    stage_env,
    tail,
    wait_until_idle,
    write_config_dir,
)

log = logging.getLogger(__name__)

VENV_BIN = Path(sys.executable).parent
MLSERVER_VENV = PROJECT_ROOT / "bench" / ".mlserver-venv"
MLSERVER_REQUIREMENTS = PROJECT_ROOT / "bench" / "mlserver-requirements.txt"
# name -> (model family, hyperparameters); None keeps params.yaml as it is (the default champion).
MODELS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "rf": None,
    "hgb": ("hist_gradient_boosting", {"max_iter": 100}),
}
MODEL_LABELS = {"rf": "the default champion (params.yaml as shipped, tuning on)",
                "hgb": "HistGradientBoosting, 100 iterations"}
PAYLOAD_ROWS = (1, 100)
IDLE_THRESHOLD_CORES = 0.3
STOP_GRACE_S = 10.0

# Targets from the issue.
TARGET_VS_DEFAULT = 10.0  # single-row req/s vs `mlflow models serve` with its defaults (issue 14; was 3)
TARGET_VS_MLSERVER = 8.0  # single-row req/s vs MLServer with adaptive batching, and a lower p99
TARGET_OF_HEALTH = 0.7  # single-row /invocations req/s vs the same server's /health at the same concurrency
TARGET_VS_EQUAL = 1.5  # single-row req/s vs `mlflow models serve -w <our workers>`
TARGET_BATCHING = 10.0  # RandomForest, 16 clients, micro-batching vs mlflow defaults
TARGET_P99_FACTOR = 3.0  # p99 at half of our max throughput vs the in-process predict time

WRK_SCRIPT = r"""
-- POSTs the file $BENCH_BODY_FILE to the URL (a GET without it); writes a JSON summary to $BENCH_RESULT_FILE.
if os.getenv("BENCH_BODY_FILE") ~= "" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
  wrk.body = f:read("*a")
  f:close()
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_RESULT_FILE"), "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
  out:close()
end
"""


# --------------------------------------------------------------------------- processes


class ProcessGroups:
    """Every child runs in its own session (process group); all of them are killed on exit or signal."""

    def __init__(self, nice: int = 0) -> None:
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self.nice = nice

    def start(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT
              ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.running[proc.pid] = proc
        if self.nice:
            set_autogroup_nice(proc.pid, self.nice)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the whole group, SIGKILL what is left after a grace period."""
        pgid = proc.pid  # start_new_session: the child leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.1)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        self.running.pop(proc.pid, None)

    def stop_all(self) -> None:
        for proc in list(self.running.values()):
            self.stop(proc)


def set_autogroup_nice(pid: int | str, nice: int) -> None:
    """With autogroup scheduling (Linux's default on desktops and here) each session is one scheduling
    entity, so a process's own niceness only counts within its session: set the session's too."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError as exc:
        log.warning("could not set the autogroup niceness of %s: %s", pid, exc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU of every live process in the group (/proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parts = stat[stat.rindex(")") + 2:].split()
        if int(parts[2]) == pgid:  # field 5: pgrp
            total += int(parts[11]) + int(parts[12])  # fields 14, 15: utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def http(method: str, url: str, body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- models and payloads


def workspace_env(workspace: Path) -> dict[str, str]:
    # Train and evaluate only: the deploy stage must not touch the project's model store or server.
    return stage_env(None, workspace, {"MLOPS_DEPLOY_TARGET": "none", "MLOPS_SERVING_URL": "http://127.0.0.1:9",
                                       "MLOPS_MODEL_STORE": str(workspace / "deploy-store"),
                                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})


def train_and_export(name: str, config_dir: Path, workspace: Path) -> Path:
    """Train the champion with main.py into `workspace` (its own MLflow store) and export it as a bundle."""
    spec = MODELS[name]
    model_config = workspace / "config"
    if spec is None:
        shutil.copytree(config_dir, model_config)
    else:
        write_config_dir(config_dir, model_config, spec[0], spec[1])
    env = workspace_env(workspace)
    logfile = workspace / "train.log"
    log.info("%s: training with main.py --config-dir %s (log: %s)", name, model_config, logfile)
    started = time.perf_counter()
    with logfile.open("wb") as out:
        done = subprocess.run([sys.executable, str(PROJECT_ROOT / "main.py"), "--config-dir", str(model_config)],
                              cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise BenchmarkError(f"training {name} failed; see {logfile}:\n{tail(logfile, 40)}")
    store = workspace / "store"
    export = subprocess.run([sys.executable, "main.py", "export", "--store", str(store), "--config-dir",
                             str(model_config), "--activate"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True)
    if export.returncode != 0:
        raise BenchmarkError(f"export of {name} failed:\n{export.stdout}\n{export.stderr}")
    from serving import pointer
    from serving import store as store_mod

    version = pointer.peek(store_mod.read_pointer(store)).version  # CURRENT is a signed pointer
    log.info("%s: trained and exported in %.0fs", name, time.perf_counter() - started)
    return store / version


def payload_rows(config_dir: Path, columns: list[str], n: int) -> list[list[float]]:
    """The first `n` rows of the configured data source, in the model's column order."""
    import pandas as pd

    from include.ml.configuration import ConfigurationManager

    source = ConfigurationManager(config_dir, env={}).config.data_source
    frame = pd.read_csv(source.uri, sep=source.separator, nrows=max(n, 1))
    return frame[columns].head(n).astype(float).values.tolist()


def model_columns(bundle: Path) -> list[str]:
    mlmodel = yaml.safe_load((bundle / "model" / "MLmodel").read_text())
    return [c["name"] for c in json.loads(mlmodel["signature"]["inputs"])]


def dataframe_split(columns: list[str], rows: list[list[float]]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def in_process_child(bundle: Path, body_files: dict[int, Path], calls: int, omp_threads: str | None
                     ) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    if omp_threads:
        env["OMP_NUM_THREADS"] = omp_threads
    spec = json.dumps({"bundle": str(bundle), "bodies": {str(n): str(f) for n, f in body_files.items()},
                       "calls": calls})
    done = subprocess.run([sys.executable, __file__, "--in-process-child", spec], env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise BenchmarkError(f"in-process timing failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["omp_num_threads"] = omp_threads or os.environ.get("OMP_NUM_THREADS") or "default"
    return result


def _timed(call: Any, repeats: int) -> dict[str, Any]:
    for _ in range(max(repeats // 20, 5)):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return {"calls": repeats, "p50_ms": statistics.median(times) * 1e3,
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3, "min_ms": times[0] * 1e3}


def in_process_predict(bundle: Path, bodies: dict[int, bytes], repeats: int) -> dict[str, Any]:
    """Predict times in this process, per payload size:

    - "ours": the server's model path (serving.model.load_bundle(b).predict on validated columns,
      served by the engine load_bundle chose: ONNX Runtime or sklearn, serving/engine.py);
    - "stock": the model's own predict as a user calls it in-process, the fastest of
      `mlflow.pyfunc.load_model(m).predict(df)` (what `mlflow models serve` calls), the scikit-learn
      Pipeline's `predict(df)` as trained, and the same with n_jobs=1 on every step.
    """
    import mlflow.pyfunc
    import pandas as pd

    from serving.inputs import mlflow_rows, validate
    from serving.model import _single_threaded, load_bundle
    from serving.signing import load_public_keys

    model = load_bundle(bundle, load_public_keys(Path(os.environ["SERVING_PUBLIC_KEY"])))
    pyfunc = mlflow.pyfunc.load_model(str(bundle / "model"))
    pipeline = pyfunc.get_raw_model()
    single = copy.deepcopy(pipeline)
    _single_threaded(single)
    stock_calls = {"mlflow_pyfunc": pyfunc.predict, "sklearn_as_trained": pipeline.predict,
                   "sklearn_n_jobs_1": single.predict}
    out: dict[str, Any] = {}
    for rows, body in bodies.items():
        request = json.loads(body)
        records, _ = mlflow_rows(request)
        batch = validate(records, model.contract, max_rows=10_000)
        frame = pd.DataFrame(request["dataframe_split"]["data"], columns=request["dataframe_split"]["columns"])
        ours = _timed(lambda batch=batch: model.predict(batch.columns), repeats)
        ours["predictions"] = model.predict(batch.columns).values
        # The stock paths cost ~10x more per call; a third of the calls keeps the child under a minute.
        stock = {name: _timed(lambda call=call, frame=frame: call(frame), max(repeats // 3, 20))
                 for name, call in stock_calls.items()}
        fastest = min(stock, key=lambda name: stock[name]["p50_ms"])
        out[str(rows)] = {**ours, "stock": {**stock[fastest], "via": fastest, "all": stock}}
    out["engine"] = {"name": model.engine.name, "reason": model.engine.reason}
    return out


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    kind: str  # "mlflow" | "mlserver" | "ours"
    workers: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ready_path(self) -> str:
        return {"mlflow": "/ping", "mlserver": "/v2/models/model/ready"}.get(self.kind, "/ready")

    @property
    def predict_path(self) -> str:
        return "/v2/models/model/infer" if self.kind == "mlserver" else "/invocations"


def server_specs(workers: int, extra_env: list[str] | None = None) -> list[ServerSpec]:
    extra = dict(item.split("=", 1) for item in extra_env or [])
    return [
        ServerSpec("mlflow_default", "`mlflow models serve` (defaults: 1 worker)", "mlflow", 1),
        ServerSpec("mlflow_equal", f"`mlflow models serve -w {workers}`", "mlflow", workers),
        ServerSpec("mlserver", f"MLServer 1.7 sklearn runtime, adaptive batching, {workers} parallel workers",
                   "mlserver", workers),
        ServerSpec("ours", f"ours, {workers} workers, micro-batching on (defaults)", "ours", workers, extra),
        ServerSpec("ours_nobatch", f"ours, {workers} workers, SERVING_BATCHING=0", "ours", workers,
                   {**extra, "SERVING_BATCHING": "0"}),
    ]


def mlserver_venv() -> Path:
    """bench/.mlserver-venv from bench/mlserver-requirements.txt, made on first use (MLServer's own pins must not
    meet the project's virtualenv)."""
    python = MLSERVER_VENV / "bin" / "python"
    stamp = MLSERVER_VENV / "requirements.txt"
    if not (python.exists() and stamp.exists() and stamp.read_text() == MLSERVER_REQUIREMENTS.read_text()):
        log.info("building %s from %s (a few minutes, once)", MLSERVER_VENV, MLSERVER_REQUIREMENTS)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(MLSERVER_REQUIREMENTS)], check=True)
        shutil.copyfile(MLSERVER_REQUIREMENTS, stamp)
    return MLSERVER_VENV / "bin" / "mlserver"


def mlserver_model_dir(bundle: Path, port: int, workers: int, workdir: Path) -> Path:
    """The bundle's pipeline as model.joblib (what the sklearn runtime loads), adaptive batching on, `workers`
    parallel inference workers (0: in the server's own process)."""
    import joblib
    import mlflow.sklearn

    directory = workdir / f"mlserver-{port}"
    (directory / "model").mkdir(parents=True, exist_ok=True)
    joblib.dump(mlflow.sklearn.load_model(str(bundle / "model")), directory / "model" / "model.joblib")
    (directory / "model" / "model-settings.json").write_text(json.dumps({
        "name": "model", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}, "max_batch_size": 32, "max_batch_time": 0.005}))
    (directory / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": workers}))
    return directory


def v2_request(columns: list[str], rows: list[list[float]]) -> bytes:
    """The same rows in the V2 inference protocol, decoded by MLServer as a DataFrame (content type pd)."""
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": [
        {"name": c, "datatype": "FP64", "shape": [len(rows)], "data": [r[i] for r in rows]}
        for i, c in enumerate(columns)]}).encode()


def server_command(spec: ServerSpec, bundle: Path, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if spec.kind == "mlserver":
        return [str(mlserver_venv()), "start", str(mlserver_model_dir(bundle, port, spec.workers, workdir))], \
            {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow execs `uvicorn` from PATH
    if spec.kind == "mlflow":
        cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(bundle / "model"), "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
        if spec.workers != 1:
            cmd += ["-w", str(spec.workers)]
        return cmd, env
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({"SERVING_MODEL_STORE": str(bundle.parent), "SERVING_BIND": f"127.0.0.1:{port}",
                "SERVING_WORKERS": str(spec.workers), "PYTHONPATH": str(PROJECT_ROOT),
                "PROMETHEUS_MULTIPROC_DIR": str(Path(tempfile.mkdtemp(prefix="metrics-", dir=workdir))), **spec.env})
    return [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "serving" / "gunicorn.conf.py")], env


def wait_ready(proc: subprocess.Popen[bytes], url: str, logfile: Path, timeout: float = 180.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise BenchmarkError(f"server exited with {proc.returncode}:\n{tail(logfile, 40)}")
        try:
            status, _ = http("GET", url, timeout=2.0)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.25)
    raise BenchmarkError(f"server not ready after {timeout:.0f}s:\n{tail(logfile, 40)}")


# --------------------------------------------------------------------------- load


def run_wrk(groups: ProcessGroups, url: str, body_file: Path | None, connections: int, duration: float,
            workdir: Path, server_pgid: int) -> dict[str, Any]:
    """wrk -t1 (one load-generator thread: the machine has 2 cores) with the POST script (GET without a body);
    CPU use alongside."""
    script = workdir / "post.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    result_file = workdir / f"wrk-{time.monotonic_ns()}.json"
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file or ""), "BENCH_RESULT_FILE": str(result_file)}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s", "--latency",
           "-s", str(script), url]
    busy0, server0, wall0 = busy_cpu_seconds(), group_cpu_seconds(server_pgid), time.monotonic()
    out_file = workdir / "wrk.out"
    out_file.write_bytes(b"")
    proc = groups.start(cmd, env, out_file)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    groups.running.pop(proc.pid, None)
    wall = time.monotonic() - wall0
    server_cpu = group_cpu_seconds(server_pgid) - server0
    busy = (busy_cpu_seconds() or 0.0) - (busy0 or 0.0)
    if proc.returncode != 0 or not result_file.exists():
        raise BenchmarkError(f"wrk failed ({proc.returncode}): {out_file.read_text()[-2000:]}")
    summary = json.loads(result_file.read_text())
    wrk_cpu = usage.ru_utime + usage.ru_stime
    seconds = summary["duration_us"] / 1e6
    lat = summary["latency_us"]
    return {
        "requests": summary["requests"], "seconds": seconds, "req_per_s": summary["requests"] / seconds,
        "errors": summary["errors"], "p50_ms": lat["p50"] / 1e3, "p90_ms": lat["p90"] / 1e3,
        "p99_ms": lat["p99"] / 1e3, "p999_ms": lat["p999"] / 1e3, "max_ms": lat["max"] / 1e3,
        "mean_ms": lat["mean"] / 1e3, "server_cores": server_cpu / wall, "wrk_cores": wrk_cpu / wall,
        "other_cores": max(0.0, (busy - server_cpu - wrk_cpu) / wall) if busy0 is not None else None,
        "wrk_stdout": out_file.read_text(),
    }


async def _open_loop(port: int, body: bytes, rate: float, duration: float, warmup: float,
                     max_connections: int) -> dict[str, Any]:
    """Requests at a constant rate (uniform spacing); latency from the *scheduled* send time."""
    request = (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = collections.deque()
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    send_lag: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    opened = 0

    async def exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, bool]:
        reader, writer = conn
        writer.write(request)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed by the server")
        status = int(status_line.split()[1])
        length, close = None, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise ValueError("response without Content-Length")
        await reader.readexactly(length)
        return status, close

    async def one(scheduled: float, measured: bool) -> None:
        nonlocal opened
        async with slots:
            if measured:
                send_lag.append(time.perf_counter() - scheduled)
            for attempt in range(2):  # a kept-alive connection the server closed meanwhile: one retry, fresh
                fresh = not idle
                if fresh:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                    opened += 1
                else:
                    conn = idle.popleft()
                try:
                    status, close = await exchange(conn)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    conn[1].close()
                    if fresh or attempt:
                        if measured:
                            statuses[type(exc).__name__] += 1
                        return
                    continue
                if measured:
                    latencies.append(time.perf_counter() - scheduled)
                    statuses[str(status)] += 1
                if close:
                    conn[1].close()
                else:
                    idle.append(conn)
                return

    total = duration + warmup
    n = int(rate * total)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled, i / rate >= warmup)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    latencies.sort()
    send_lag.sort()

    def pct(values: list[float], q: float) -> float | None:
        return values[min(len(values) - 1, int(len(values) * q))] * 1e3 if values else None

    measured_n = sum(1 for i in range(n) if i / rate >= warmup)
    return {"rate": rate, "seconds": duration, "scheduled": measured_n, "completed": len(latencies),
            "statuses": dict(statuses), "connections_opened": opened,
            "achieved_req_per_s": len(latencies) / duration, "p50_ms": pct(latencies, 0.50),
            "p90_ms": pct(latencies, 0.90), "p99_ms": pct(latencies, 0.99), "p999_ms": pct(latencies, 0.999),
            "max_ms": latencies[-1] * 1e3 if latencies else None, "send_lag_p99_ms": pct(send_lag, 0.99),
            "elapsed_s": elapsed}


def open_loop(port: int, body: bytes, rate: float, duration: float, warmup: float, server_pgid: int,
              max_connections: int = 64) -> dict[str, Any]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    busy0, server0, wall0 = busy_cpu_seconds(), group_cpu_seconds(server_pgid), time.monotonic()
    self0 = time.process_time()
    # The generator's own garbage collections (its tasks and coroutines: tens of thousands of objects)
    # paused it for 13-26 ms, and every answer arriving meanwhile counted that pause as server latency.
    gc.collect()
    gc.disable()
    try:
        result = runner(_open_loop(port, body, rate, duration, warmup, max_connections))
    finally:
        gc.enable()
    wall = time.monotonic() - wall0
    server_cpu = group_cpu_seconds(server_pgid) - server0
    own = time.process_time() - self0
    busy = (busy_cpu_seconds() or 0.0) - (busy0 or 0.0)
    result.update(server_cores=server_cpu / wall, generator_cores=own / wall,
                  other_cores=max(0.0, (busy - server_cpu - own) / wall) if busy0 is not None else None)
    return result


# --------------------------------------------------------------------------- one model


def bench_model(name: str, bundle: Path, args: argparse.Namespace, groups: ProcessGroups, workdir: Path
                ) -> dict[str, Any]:
    columns = model_columns(bundle)
    bodies = {n: dataframe_split(columns, payload_rows(args.config_dir, columns, n)) for n in PAYLOAD_ROWS}
    v2_bodies = {n: v2_request(columns, payload_rows(args.config_dir, columns, n)) for n in PAYLOAD_ROWS}
    body_files, v2_files = {}, {}
    for n in PAYLOAD_ROWS:
        body_files[n], v2_files[n] = workdir / f"{name}-{n}row.json", workdir / f"{name}-{n}row-v2.json"
        body_files[n].write_bytes(bodies[n])
        v2_files[n].write_bytes(v2_bodies[n])
    # In a child, as a server worker would: with the default OpenMP threads and with the single thread
    # serving/gunicorn.conf.py sets; the faster of the two is "the in-process predict time" (the strict choice).
    inproc: dict[str, Any] = {}
    for label, threads in (("default_threads", None), ("omp_1_thread", "1")):
        wait_until_idle(args.idle_timeout, IDLE_THRESHOLD_CORES)
        inproc[label] = in_process_child(bundle, body_files, args.inprocess_calls, threads)
        log.info("%s: in-process predict (%s): ours 1 row p50 %.2f ms, 100 rows %.2f ms; the model's own "
                 "(stock, %s) 1 row %.2f ms, 100 rows %.2f ms", name, label, inproc[label]["1"]["p50_ms"],
                 inproc[label]["100"]["p50_ms"], inproc[label]["1"]["stock"]["via"],
                 inproc[label]["1"]["stock"]["p50_ms"], inproc[label]["100"]["stock"]["p50_ms"])
    runs = list(inproc.values())
    best = min(runs, key=lambda r: r["1"]["p50_ms"])
    expected = best["100"]["predictions"]
    for r in runs:
        for n in PAYLOAD_ROWS:
            r[str(n)].pop("predictions")
    inproc.update({str(n): best[str(n)] for n in PAYLOAD_ROWS}, engine=best["engine"])
    inproc["stock"] = {str(n): min((r[str(n)]["stock"] for r in runs), key=lambda s: s["p50_ms"])
                       for n in PAYLOAD_ROWS}
    result: dict[str, Any] = {"model": name, "label": MODEL_LABELS.get(name, name), "bundle": str(bundle),
                              "in_process": inproc, "servers": {}}
    for spec in server_specs(args.workers, args.env):
        if args.servers and spec.key not in args.servers:
            continue
        port = free_port()
        cmd, env = server_command(spec, bundle, port, workdir)
        logfile = workdir / f"{name}-{spec.key}.log"
        proc = groups.start(cmd, env, logfile)
        entry: dict[str, Any] = {"label": spec.label, "kind": spec.kind, "workers": spec.workers,
                                 "command": " ".join(cmd), "env": {k: v for k, v in env.items()
                                                                   if k.startswith("SERVING_")}, "runs": {}}
        try:
            try:
                entry["ready_s"] = wait_ready(proc, f"http://127.0.0.1:{port}{spec.ready_path}", logfile)
            except BenchmarkError as exc:
                if spec.kind != "mlserver" or not spec.workers:
                    raise
                # MLServer 1.7's parallel workers can die at start ("There is no current event loop"):
                # then its in-process mode (parallel_workers 0), and the table says so.
                log.warning("MLServer with %d parallel workers did not start (%s); using its in-process mode",
                            spec.workers, str(exc).splitlines()[0])
                groups.stop(proc)
                entry["parallel_workers_failed"] = tail(logfile, 20)
                port = free_port()
                spec = ServerSpec(spec.key, "MLServer 1.7 sklearn runtime, adaptive batching, in-process "
                                  "(its parallel workers failed to start)", "mlserver", 0)
                cmd, env = server_command(spec, bundle, port, workdir)
                proc = groups.start(cmd, env, logfile)
                entry.update(label=spec.label, workers=0, command=" ".join(cmd))
                entry["ready_s"] = wait_ready(proc, f"http://127.0.0.1:{port}{spec.ready_path}", logfile)
            url = f"http://127.0.0.1:{port}{spec.predict_path}"
            files = v2_files if spec.kind == "mlserver" else body_files
            status, answer = http("POST", url, (v2_bodies if spec.kind == "mlserver" else bodies)[100])
            got = None
            if status == 200:
                got = json.loads(answer)["outputs"][0]["data"] if spec.kind == "mlserver" \
                    else json.loads(answer).get("predictions")
            if got is None or len(got) != len(expected):
                raise BenchmarkError(f"{spec.key} answered {status}: {answer[:300]!r}")
            entry["max_abs_diff_vs_in_process"] = max(abs(a - b) for a, b in zip(got, expected)) \
                if all(isinstance(v, (int, float)) for v in got) else (0.0 if got == expected else None)
            for n in PAYLOAD_ROWS:
                log.info("%s / %s / %d row(s): warm-up %.0fs, then %.0fs at %d connections", name, spec.key, n,
                         args.warmup, args.duration, args.connections)
                wait_until_idle(args.idle_timeout, IDLE_THRESHOLD_CORES)
                run_wrk(groups, url, files[n], args.connections, args.warmup, workdir, proc.pid)
                run = run_wrk(groups, url, files[n], args.connections, args.duration, workdir, proc.pid)
                run["rows_per_s"] = run["req_per_s"] * n
                run["server_cpu_ms_per_req"] = run["server_cores"] * 1e3 / run["req_per_s"] if run["requests"] else None
                entry["runs"][str(n)] = run
                log.info("  %.1f req/s, %.1f rows/s, p50 %.1f ms, p99 %.1f ms, errors %s, server %.2f cores "
                         "(%.2f ms CPU/request), wrk %.2f, other %.2f", run["req_per_s"], run["rows_per_s"],
                         run["p50_ms"], run["p99_ms"], {k: v for k, v in run["errors"].items() if v},
                         run["server_cores"], run["server_cpu_ms_per_req"] or 0.0, run["wrk_cores"],
                         run["other_cores"] or 0.0)
            if spec.key == "ours":
                entry["floor"] = floor_pairs(groups, port, url, files[1], args, workdir, proc.pid)
            if args.rate_duration > 0 and spec.key in ("ours", "mlflow_default"):
                rate = args.rate or entry["runs"]["1"]["req_per_s"] / 2
                log.info("%s / %s: 1 row at a constant %.0f req/s (half of its max) for %.0fs", name, spec.key,
                         rate, args.rate_duration)
                wait_until_idle(args.idle_timeout, IDLE_THRESHOLD_CORES)
                half = open_loop(port, bodies[1], rate, args.rate_duration, min(3.0, args.warmup), proc.pid)
                entry["half_load"] = half
                log.info("  achieved %.1f req/s, p50 %.1f ms, p99 %.1f ms, max %.1f ms, statuses %s, "
                         "generator lag p99 %.1f ms, server %.2f / generator %.2f / other %.2f cores",
                         half["achieved_req_per_s"], half["p50_ms"] or -1, half["p99_ms"] or -1, half["max_ms"] or -1,
                         half["statuses"], half["send_lag_p99_ms"] or -1, half["server_cores"],
                         half["generator_cores"], half["other_cores"] or 0.0)
        finally:
            groups.stop(proc)
        result["servers"][spec.key] = entry
    result["targets"] = targets(result, args.connections)
    return result


def floor_pairs(groups: ProcessGroups, port: int, url: str, body_file: Path, args: argparse.Namespace,
                workdir: Path, pid: int) -> list[dict[str, Any]]:
    """The server's own floor, GET /health, and single-row /invocations at the same load, one right after the
    other, `args.floor_rounds` times: a shared machine's speed drifts by more than the gap between two runs
    minutes apart, so each pair gives a ratio. Sorted by ratio (the median pair decides)."""
    health = f"http://127.0.0.1:{port}/health"
    wait_until_idle(args.idle_timeout, IDLE_THRESHOLD_CORES)
    run_wrk(groups, health, None, args.connections, args.warmup, workdir, pid)
    pairs = []
    for _ in range(max(1, args.floor_rounds)):
        wait_until_idle(args.idle_timeout, IDLE_THRESHOLD_CORES)
        floor = run_wrk(groups, health, None, args.connections, args.duration, workdir, pid)
        predict = run_wrk(groups, url, body_file, args.connections, args.duration, workdir, pid)
        pairs.append({"health": floor, "invocations": predict, "ratio": predict["req_per_s"] / floor["req_per_s"]})
        log.info("  /health %.1f req/s (p99 %.1f ms), then 1-row /invocations %.1f req/s: %.2f×", floor["req_per_s"],
                 floor["p99_ms"], predict["req_per_s"], pairs[-1]["ratio"])
    return sorted(pairs, key=lambda pair: pair["ratio"])


# --------------------------------------------------------------------------- reporting


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(result: dict[str, Any], connections: int) -> list[dict[str, Any]]:
    servers = result["servers"]

    def rps(key: str, n: int = 1) -> float | None:
        return servers.get(key, {}).get("runs", {}).get(str(n), {}).get("req_per_s")

    out = []

    def add(name: str, measured: float | None, target: float, unit: str, higher_is_better: bool = True,
            note: str = "") -> None:
        met = None if measured is None else (measured >= target if higher_is_better else measured <= target)
        out.append({"target": name, "measured": measured, "threshold": target, "unit": unit, "met": met,
                    "note": note, "higher_is_better": higher_is_better})

    add("single-row req/s, ours ÷ mlflow defaults", _ratio(rps("ours"), rps("mlflow_default")), TARGET_VS_DEFAULT,
        "×")
    add("single-row req/s, ours ÷ mlflow at equal workers", _ratio(rps("ours"), rps("mlflow_equal")),
        TARGET_VS_EQUAL, "×")
    add("single-row req/s without batching, ours ÷ mlflow defaults", _ratio(rps("ours_nobatch"),
        rps("mlflow_default")), TARGET_VS_DEFAULT, "×", note="informative: the target above without micro-batching")
    add("single-row req/s without batching, ours ÷ mlflow at equal workers",
        _ratio(rps("ours_nobatch"), rps("mlflow_equal")), TARGET_VS_EQUAL, "×", note="informative")
    if result["model"] == "rf":
        add(f"micro-batching, {connections} clients, ours ÷ mlflow defaults",
            _ratio(rps("ours"), rps("mlflow_default")), TARGET_BATCHING, "×",
            note="" if connections == 16 else "the target is stated for 16 clients")
    floor = servers.get("ours", {}).get("floor") or []
    if floor:
        pair, ratios = floor[len(floor) // 2], ", ".join(f"{p['ratio']:.2f}" for p in floor)
        add(f"single-row /invocations ÷ /health req/s, ours, {connections} clients", pair["ratio"], TARGET_OF_HEALTH,
            "×", note=f"the median of {len(floor)} alternating pairs ({ratios}); its /health "
                      f"{pair['health']['req_per_s']:,.0f} req/s is the server's own floor")
    mlserver = servers.get("mlserver", {})
    p99s = (servers.get("ours", {}).get("runs", {}).get("1", {}).get("p99_ms"),
            mlserver.get("runs", {}).get("1", {}).get("p99_ms"))
    add(f"single-row req/s, ours ÷ MLServer, {connections} clients", _ratio(rps("ours"), rps("mlserver")),
        TARGET_VS_MLSERVER, "×", note=mlserver.get("label", "") + (
            f"; p99 ours {p99s[0]:.1f} ms vs {p99s[1]:.1f} ms" if None not in p99s else ""))
    if None not in p99s:
        add("single-row p99, MLServer ÷ ours", p99s[1] / p99s[0], 1.0, "×", note="lower p99 than MLServer")
    half = servers.get("ours", {}).get("half_load")
    ours = result["in_process"]["1"]["p50_ms"]
    stock = result["in_process"].get("stock", {}).get("1")  # absent in reports from before it was measured
    if half and half.get("p99_ms") is not None:
        at = f"p99 {half['p99_ms']:.1f} ms at {half['rate']:.0f} req/s"
        if stock:
            add("p99 at half of our max single-row throughput ÷ the model's own in-process predict (1 row, p50)",
                half["p99_ms"] / stock["p50_ms"], TARGET_P99_FACTOR, "×", higher_is_better=False,
                note=f"{at}; the fastest stock call, {stock['via']}: {stock['p50_ms']:.2f} ms")
        add("p99 at half of our max single-row throughput ÷ our server's in-process model path (1 row, p50)",
            half["p99_ms"] / ours, TARGET_P99_FACTOR, "×", higher_is_better=False,
            note=f"{at}; load_bundle(b).predict ({result['in_process'].get('engine', {}).get('name', 'sklearn')}): "
                 f"{ours:.2f} ms"
                 + ("; informative, the stricter reading" if stock else ""))
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_report(report: dict[str, Any]) -> str:
    lines = []
    conns = report["settings"]["connections"]
    for result in report["models"]:
        servers = result["servers"]
        lines += [f"### {result['label']}", "",
                  f"In-process predict, our server's model path (`load_bundle(b).predict`, p50 of "
                  f"{result['in_process']['1']['calls']} calls, the faster of default threads / OMP_NUM_THREADS=1): "
                  f"1 row {result['in_process']['1']['p50_ms']:.2f} ms, "
                  f"100 rows {result['in_process']['100']['p50_ms']:.2f} ms"
                  + "".join(f"; {k}: 1 row {v['1']['p50_ms']:.2f} ms" for k, v in result["in_process"].items()
                            if k.endswith(("threads", "thread"))) + ".", "",
                  *([f"The model's own in-process predict (stock; fastest of mlflow pyfunc, the Pipeline as trained "
                     f"and with n_jobs=1, over both thread settings): 1 row "
                     f"{result['in_process']['stock']['1']['p50_ms']:.2f} ms "
                     f"({result['in_process']['stock']['1']['via']}), 100 rows "
                     f"{result['in_process']['stock']['100']['p50_ms']:.2f} ms "
                     f"({result['in_process']['stock']['100']['via']}); 1 row by call: "
                     + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in
                                 result["in_process"]["stock"]["1"]["all"].items()) + ".", ""]
                    if "stock" in result["in_process"] else []),
                  f"wrk, 1 thread, {conns} connections, {report['settings']['duration']:.0f} s per row"
                  f"{', niceness ' + str(report['settings']['nice']) if report['settings'].get('nice') else ''}:", "",
                  "| rows/request | server | req/s | rows/s | p50 ms | p99 ms | errors | req/s ours ÷ this "
                  "| p99 this ÷ ours | CPU: server / wrk / other (cores) |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for n in PAYLOAD_ROWS:
            ours = servers.get("ours", {}).get("runs", {}).get(str(n))
            for key, entry in servers.items():
                run = entry["runs"].get(str(n))
                if run is None:
                    continue
                errors = sum(run["errors"].values())
                mine = key == "ours"
                vs = "—" if mine or not ours else f"{_ratio(ours['req_per_s'], run['req_per_s']):.2f}×"
                p99 = "—" if mine or not ours else f"{_ratio(run['p99_ms'], ours['p99_ms']):.2f}×"
                label = f"**{entry['label']}**" if mine else entry["label"]
                lines.append(f"| {n} | {label} | {_fmt(run['req_per_s'])} | {_fmt(run['rows_per_s'], 0)} | "
                             f"{_fmt(run['p50_ms'])} | {_fmt(run['p99_ms'])} | {errors} | {vs} | {p99} | "
                             f"{run['server_cores']:.2f} / {run['wrk_cores']:.2f} / "
                             f"{_fmt(run['other_cores'], 2)} |")
        floor = servers.get("ours", {}).get("floor")
        if floor:
            lines += ["", f"The server's own floor, GET /health on ours at the same {conns} connections, each run "
                          "followed by single-row /invocations (pairs sorted by ratio):", "",
                      "| /health req/s | /health p99 ms | /invocations req/s | /invocations p99 ms | ratio |",
                      "|---:|---:|---:|---:|---:|"]
            lines += [f"| {_fmt(p['health']['req_per_s'])} | {_fmt(p['health']['p99_ms'])} | "
                      f"{_fmt(p['invocations']['req_per_s'])} | {_fmt(p['invocations']['p99_ms'])} | "
                      f"{p['ratio']:.2f}× |" for p in floor]
        engine = result["in_process"].get("engine")
        if engine:
            lines += ["", f"Engine serving this model: {engine['name']}"
                          + (f" (fallback: {engine['reason']})" if engine["reason"] else "") + "."]
        halves = [(k, e["half_load"]) for k, e in servers.items() if e.get("half_load")]
        if halves:
            lines += ["", "Constant rate, 1 row, half of the server's own max req/s above (open loop, latency "
                      "from the scheduled send time):", "",
                      "| server | rate req/s | achieved | p50 ms | p99 ms | max ms | non-200 | generator lag p99 ms |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for key, half in halves:
                bad = sum(v for s, v in half["statuses"].items() if s != "200")
                lines.append(f"| {servers[key]['label']} | {half['rate']:.0f} | {half['achieved_req_per_s']:.0f} | "
                             f"{_fmt(half['p50_ms'])} | {_fmt(half['p99_ms'])} | {_fmt(half['max_ms'])} | {bad} | "
                             f"{_fmt(half['send_lag_p99_ms'])} |")
        lines += ["", "| target | measured | needed | met |", "|---|---:|---:|---|"]
        for t in result["targets"]:
            sign = "≥" if t.get("higher_is_better", t["target"].startswith(("single", "micro"))) else "≤"
            met = {True: "**yes**", False: "**no**", None: "n/a"}[t["met"]]
            note = f" ({t['note']})" if t["note"] else ""
            lines.append(f"| {t['target']}{note} | {_fmt(t['measured'], 2)}{t['unit']} | {sign} "
                         f"{t['threshold']:g}{t['unit']} | {met} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["rf", "hgb"])
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR",
                        help="bench this existing bundle (a store's <version>/ dir) as NAME instead of training")
    parser.add_argument("--servers", nargs="+", choices=[s.key for s in server_specs(2)],
                        help="only these servers (default: all)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR,
                        help="pipeline config the models are trained from (and the payload rows read from)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("SERVING_WORKERS", "2")),
                        help="our worker count, also given to `mlflow models serve -w` (default: 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (concurrent clients)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement")
    parser.add_argument("--rate-duration", type=float, default=20.0,
                        help="seconds at a constant half-max rate (0 skips the p99 at half load)")
    parser.add_argument("--rate", type=float, help="constant rate for the p99 run instead of half the max")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for our server, to try a setting (e.g. SERVING_THREADS=8)")
    parser.add_argument("--inprocess-calls", type=int, default=300)
    parser.add_argument("--floor-rounds", type=int, default=5,
                        help="alternating /health and 1-row /invocations runs on ours (the median ratio decides)")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="wait up to this long for other processes to go quiet before each measurement")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the bench, its servers and wrk at this niceness (e.g. -10 as root on a shared box, "
                             "so other processes disturb the measurement less; the same for every server)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, bundles)")
    parser.add_argument("--report", type=Path, help="re-print the tables of an earlier JSON result")
    parser.add_argument("--in-process-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.in_process_child:
        spec = json.loads(args.in_process_child)
        bodies = {int(n): Path(f).read_bytes() for n, f in spec["bodies"].items()}
        print(json.dumps(in_process_predict(Path(spec["bundle"]), bodies, spec["calls"])))
        return 0
    if args.report:
        print(markdown_report(json.loads(args.report.read_text())))
        return 0
    if shutil.which("wrk") is None:
        print("wrk not found; install it (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    if args.nice:
        os.nice(args.nice)  # inherited by every child: servers, wrk, the in-process timing
        set_autogroup_nice("self", args.nice)
    # Servers and the in-process timing trust the key export signs with (the config's signing.public_key).
    from include.ml.configuration import ConfigurationManager

    os.environ.setdefault("SERVING_PUBLIC_KEY",
                          str(ConfigurationManager(args.config_dir, env={}).config.signing.public_key))
    bundles = dict(item.split("=", 1) for item in args.bundle)
    names = list(dict.fromkeys([*bundles, *([] if bundles else args.models)]))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    groups = ProcessGroups(args.nice)
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    report: dict[str, Any] = {
        "benchmark": "serving", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(), "wrk": subprocess.run(["wrk", "--version"], capture_output=True,
                                                          text=True).stdout.splitlines()[:1],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "models": []}
    try:
        for name in names:
            if name in bundles:
                bundle = Path(bundles[name]).resolve()
            else:
                bundle = train_and_export(name, args.config_dir.resolve(), workdir / f"train-{name}")
            report["models"].append(bench_model(name, bundle, args, groups, workdir))
    except KeyboardInterrupt:
        log.error("interrupted; stopping the servers")
        return 130
    finally:
        groups.stop_all()
        if args.keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"serving-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_report(report))
    print(f"raw results: {out.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
