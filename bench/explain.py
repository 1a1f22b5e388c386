"""What explanations cost (issue 24): `POST /explain` latency and throughput, `/invocations` throughput with the
route present vs `SERVING_EXPLAIN=off`, and `python main.py predict --explain` on a million rows.

In a temp workspace (or --workspace, reused when it already holds them) it trains three wine-quality champions with
`python main.py` (deployment off), each exported with `main.py export --store S --activate`:

- forest: params.yaml's model as shipped (extra_trees, 200 trees, n_jobs -1), tuning off so that model is trained;
- hgb: hist_gradient_boosting, 100 iterations;
- elasticnet: ElasticNet with its defaults.

Then, for each, our gunicorn server on the bundle (SERVING_* defaults: 2 workers, micro-batching on):

1. one-row `/explain` latency: --latency-requests sequential requests on one kept-alive connection (one worker)
   after --warmup-requests, p50 / p95 / mean;
2. `/explain` throughput: `wrk -t1 -c16` (bench/prediction_server/'s wrk helper) after a warm-up run that builds
   each worker's explainer;
3. forest only: `/invocations` throughput, one row, 16 connections, on that server (route present, each worker's
   explainer built) and on a second one started with SERVING_EXPLAIN=off, alternating --rounds times (both servers
   stay up; the idle one costs nothing), medians and their ratio;

and `python main.py predict` as a child (wall, CPU, peak RSS) on --rows generated wine-schema rows
(bench/synthetic.py): hgb without and with `--explain`; the forest with `--explain` on --forest-rows and a quarter of
them, its rate being the marginal one between the two (start-up, export and load cancel) and its million-row time
extrapolated from it, said so; last, in this process, the CPU of each step of a one-row explanation (the
preprocessing, the attribution, explain() whole) beside the estimator's predict (which /explain answers) and ONNX
Runtime's (which /invocations answers), median of 200 calls (15 for the forest).

    .venv/bin/python -m bench.explain                          # ~15 minutes on 2 cores, most of it predict --explain
    .venv/bin/python -m bench.explain --rows 200000 --workspace /tmp/explain-ws --skip-batch

Needs wrk. Results: Markdown on stdout, JSON under bench/results/. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.batch_predict import predict_command, workspace_env
from bench.common import (
    DEFAULT_CONFIG_DIR,
    PROJECT_ROOT,
    RESULTS_DIR,
    BenchmarkError,
    free_port,
    machine_facts,
    wait_until_idle,
    write_config_dir,
)
from bench.pipeline_scaling import run_measured
from bench.prediction_server import (
    ProcessGroups,
    ServerSpec,
    dataframe_split,
    model_columns,
    payload_rows,
    run_wrk,
    server_command,
    wait_ready,
)
from bench.synthetic import generate_in_child

log = logging.getLogger("bench.explain")
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "forest": ("extra_trees", {"n_estimators": 200, "n_jobs": -1}),  # params.yaml's model: as shipped
    "hgb": ("hist_gradient_boosting", {"max_iter": 100}),
    "elasticnet": ("elasticnet", {}),
}
LABELS = {"forest": "default forest (extra_trees, 200 trees)", "hgb": "HistGradientBoosting, 100 iterations",
          "elasticnet": "ElasticNet"}
TARGET_P50_MS = 20.0  # one row, a 200-tree forest (issue 24)


@dataclass(frozen=True)
class Trained:
    name: str
    config_dir: Path
    env: dict[str, str]
    bundle: Path


def train(name: str, args: argparse.Namespace, root: Path) -> Trained:
    """The champion of `name` trained and exported in root/<name>, or the one already there."""
    from serving import pointer
    from serving import store as store_mod

    workspace = root / name
    config_dir, store = workspace / "config", workspace / "store"
    env = workspace_env(workspace)
    if not (store / store_mod.CURRENT).exists():
        family, hyperparameters = MODELS[name]
        write_config_dir(args.config_dir, config_dir, family, hyperparameters)
        started = time.perf_counter()
        for command in (["main.py", "--config-dir", str(config_dir), "--run-id", "bench"],
                        ["main.py", "export", "--store", str(store), "--config-dir", str(config_dir), "--activate"]):
            done = subprocess.run([sys.executable, *command], cwd=PROJECT_ROOT, env=env, capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise BenchmarkError(f"{name}: {' '.join(command)} failed:\n{done.stderr[-4000:]}")
        log.info("%s: trained and exported in %.0fs", name, time.perf_counter() - started)
    version = pointer.peek(store_mod.read_pointer(store)).version
    return Trained(name, config_dir, env, store / version)


class Server:
    """Our gunicorn server on a bundle (SERVING_* defaults plus `env`), in its own process group."""

    def __init__(self, groups: ProcessGroups, trained: Trained, workdir: Path, key: str, **env: str) -> None:
        self.groups, self.port = groups, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        public = str(Path(trained.env["MLOPS_SIGNING_PUBLIC_KEY"]))
        spec = ServerSpec(key, "", "ours", 2, {"SERVING_PUBLIC_KEY": public, **env})
        cmd, full_env = server_command(spec, trained.bundle, self.port, workdir)
        logfile = workdir / f"{key}.log"
        self.proc = groups.start(cmd, full_env, logfile)
        wait_ready(self.proc, f"{self.url}/ready", logfile)

    def stop(self) -> None:
        self.groups.stop(self.proc)


def latency(port: int, body: bytes, requests: int, warmup: int) -> dict[str, Any]:
    """Sequential one-row /explain requests on one kept-alive connection: p50, p95, mean (ms)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    times = []
    for i in range(warmup + requests):
        started = time.perf_counter()
        connection.request("POST", "/explain", body, headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise BenchmarkError(f"/explain answered {response.status}: {answer[:500]!r}")
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1e3)
    connection.close()
    times.sort()
    return {"requests": requests, "p50_ms": statistics.median(times),
            "p95_ms": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], "mean_ms": statistics.fmean(times),
            "max_ms": times[-1]}


def wrk(groups: ProcessGroups, server: Server, path: str, body_file: Path, args: argparse.Namespace,
        workdir: Path, warmup: float) -> dict[str, Any]:
    if warmup:
        run_wrk(groups, server.url + path, body_file, args.connections, warmup, workdir, server.proc.pid)
    run = run_wrk(groups, server.url + path, body_file, args.connections, args.duration, workdir, server.proc.pid)
    run.pop("wrk_stdout")
    run["server_cpu_ms_per_req"] = 1000 * run["server_cores"] * run["seconds"] / max(run["requests"], 1)
    return run


def serve_model(trained: Trained, args: argparse.Namespace, groups: ProcessGroups, workdir: Path) -> dict[str, Any]:
    rows = payload_rows(trained.config_dir, model_columns(trained.bundle), 1)
    body = dataframe_split(model_columns(trained.bundle), rows)
    body_file = workdir / f"{trained.name}-row.json"
    body_file.write_bytes(body)
    result: dict[str, Any] = {}
    wait_until_idle(args.idle_timeout)
    server = Server(groups, trained, workdir, f"{trained.name}-explain-on")
    try:
        result["version"] = json.loads(urlopen_text(f"{server.url}/version"))
        result["latency"] = latency(server.port, body, args.latency_requests, args.warmup_requests)
        log.info("%s: one-row /explain p50 %.1f ms, p95 %.1f ms", trained.name, result["latency"]["p50_ms"],
                 result["latency"]["p95_ms"])
        result["explain_wrk"] = wrk(groups, server, "/explain", body_file, args, workdir, args.warmup)
        log.info("%s: /explain %.1f req/s at %d connections (p50 %.1f ms, p99 %.1f ms)", trained.name,
                 result["explain_wrk"]["req_per_s"], args.connections, result["explain_wrk"]["p50_ms"],
                 result["explain_wrk"]["p99_ms"])
        if trained.name == "forest":
            result["invocations"] = invocations_on_off(groups, server, trained, body_file, args, workdir)
    finally:
        server.stop()
    return result


def invocations_on_off(groups: ProcessGroups, on: Server, trained: Trained, body_file: Path,
                       args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """/invocations, one row, on the server with the route (explainers built) and one with SERVING_EXPLAIN=off,
    alternating."""
    off = Server(groups, trained, workdir, "forest-explain-off", SERVING_EXPLAIN="off")
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    try:
        for server in (on, off):
            wrk(groups, server, "/invocations", body_file, args, workdir, 0)  # warm-up (the first is discarded)
        for i in range(args.rounds):
            for mode, server in (("on", on), ("off", off)):
                run = wrk(groups, server, "/invocations", body_file, args, workdir, 0)
                runs[mode].append(run)
                log.info("/invocations, route %s, round %d: %.0f req/s (server %.3f CPU ms/request, other %.2f "
                         "cores)", mode, i + 1, run["req_per_s"], run["server_cpu_ms_per_req"],
                         run["other_cores"] or 0.0)
    finally:
        off.stop()

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    summary = {mode: {key: median(mode, key) for key in ("req_per_s", "p50_ms", "p99_ms", "server_cores",
                                                          "server_cpu_ms_per_req", "other_cores")}
               for mode in runs}
    summary["ratio_req_per_s"] = summary["on"]["req_per_s"] / summary["off"]["req_per_s"]
    summary["ratio_cpu_per_req"] = summary["off"]["server_cpu_ms_per_req"] / summary["on"]["server_cpu_ms_per_req"]
    summary["runs"] = runs
    return summary


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback only
        return response.read().decode()


def batch(models: dict[str, Trained], args: argparse.Namespace, workspace: Path) -> dict[str, Any]:
    logs = workspace / "logs"
    big, small, quarter = workspace / "big.csv", workspace / "forest.csv", workspace / "forest-quarter.csv"
    seconds = generate_in_child(args.config_dir, args.rows, args.seed, big)
    log.info("generated %d rows in %.0fs", args.rows, seconds)
    generate_in_child(args.config_dir, args.forest_rows, args.seed, small)
    generate_in_child(args.config_dir, args.forest_rows // 4, args.seed, quarter)
    runs = {f"hgb, {args.rows:,} rows, predict": ("hgb", big, False),
            f"hgb, {args.rows:,} rows, predict --explain": ("hgb", big, True),
            f"forest, {args.forest_rows // 4:,} rows, predict --explain": ("forest", quarter, True),
            f"forest, {args.forest_rows:,} rows, predict --explain": ("forest", small, True)}
    out: dict[str, Any] = {}
    for i, (label, (name, source, explain)) in enumerate(runs.items()):
        trained = models[name]
        command = predict_command(trained.config_dir, source, workspace / f"out-{i}.parquet")
        measured = run_measured(command + (["--explain"] if explain else []), trained.env, logs, f"predict-{i}",
                                args.idle_timeout)
        out[label] = asdict(measured)
        log.info("%s: %.1fs wall, %.0f MB peak, other processes %.2f cores", label, measured.wall_s,
                 measured.peak_mb, measured.other_cores)
    walls = [m["wall_s"] for m in out.values()]
    cpus = [m["user_s"] + m["sys_s"] for m in out.values()]
    extra = args.forest_rows - args.forest_rows // 4
    marginal = extra / max(walls[3] - walls[2], 1e-9)  # rows/s past start-up
    marginal_cpu = extra / max(cpus[3] - cpus[2], 1e-9)  # rows per CPU second: what other processes change less
    return {"rows": args.rows, "forest_rows": args.forest_rows, "runs": out,
            "hgb_explain_rows_per_s": args.rows / walls[1], "hgb_predict_rows_per_s": args.rows / walls[0],
            "forest_explain_marginal_rows_per_s": marginal, "forest_explain_marginal_rows_per_cpu_s": marginal_cpu,
            "forest_explain_1m_extrapolated_s": walls[2] + (1_000_000 - args.forest_rows // 4) / marginal,
            "forest_explain_1m_extrapolated_cpu_s": cpus[2] + (1_000_000 - args.forest_rows // 4) / marginal_cpu}


def in_process(trained: Trained, calls: int) -> dict[str, float]:
    """CPU ms (median of `calls`, this process, every thread) of each step of a one-row explanation, beside the
    predictions /explain (the estimator's) and /invocations (ONNX Runtime) make."""
    from serving import signing
    from serving.engine import model_frame
    from serving.explain import build_explainer
    from serving.inputs import validate
    from serving.model import load_bundle

    model = load_bundle(trained.bundle, signing.load_public_keys(Path(trained.env["MLOPS_SIGNING_PUBLIC_KEY"])))
    explainer = build_explainer(model.estimator, model.contract)
    rows = [dict(zip(model_columns(trained.bundle), payload_rows(trained.config_dir, model_columns(trained.bundle),
                                                                 1)[0]))]
    columns = validate(rows, model.contract, max_rows=1).columns
    preprocess = model.estimator.named_steps["preprocess"]
    encoded = preprocess.transform(model_frame(columns))
    steps = {"preprocess": lambda: preprocess.transform(model_frame(columns)),
             "attribution": lambda: explainer._attribute(encoded),  # TreeSHAP or coef x value, on the encoded row
             "explain": lambda: explainer.explain(columns),
             "sklearn_predict": lambda: model.sklearn_predict(columns),
             "onnx_predict": lambda: model.predict(columns)}
    out = {}
    for name, step in steps.items():
        step()
        times = []
        for _ in range(calls):
            started = time.process_time()
            step()
            times.append(time.process_time() - started)
        out[name] = statistics.median(times) * 1e3
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| model | one-row /explain p50 ms | p95 ms | /explain req/s, 16 conn. | p99 ms | server CPU ms/request "
             "| explainer |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, served in result["serving"].items():
        lat, run = served["latency"], served["explain_wrk"]
        explain = served["version"].get("explain") or {}
        lines.append(f"| {LABELS[name]} | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} | {run['req_per_s']:.1f} | "
                     f"{run['p99_ms']:.1f} | {run['server_cpu_ms_per_req']:.2f} | {explain.get('method', '?')}, "
                     f"{explain.get('output', '?')} |")
    inv = result["serving"].get("forest", {}).get("invocations")
    if inv:
        lines += ["", "| /invocations, one row, 16 conn., default forest, median of "
                  f"{len(inv['runs']['on'])} | req/s | p50 ms | p99 ms | server CPU ms/request | other cores |",
                  "|---|---:|---:|---:|---:|---:|"]
        for mode, label in (("on", "route present (explainers built)"), ("off", "SERVING_EXPLAIN=off")):
            m = inv[mode]
            lines.append(f"| {label} | {m['req_per_s']:.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
                         f"{m['server_cpu_ms_per_req']:.3f} | {m['other_cores']:.2f} |")
        lines.append(f"| present / off | **{inv['ratio_req_per_s']:.2f}** | | | **{inv['ratio_cpu_per_req']:.2f}** "
                     "(requests per CPU s) | |")
    if result.get("batch"):
        b = result["batch"]
        lines += ["", "| batch run | wall s | rows/s | CPU s | peak MB | other cores |",
                  "|---|---:|---:|---:|---:|---:|"]
        for label, m in b["runs"].items():
            rows = int(label.split(", ")[1].split()[0].replace(",", ""))
            lines.append(f"| {label} | {m['wall_s']:.1f} | {rows / m['wall_s']:,.0f} | {m['user_s'] + m['sys_s']:.1f} "
                         f"| {m['peak_mb']:.0f} | {m['other_cores']:.2f} |")
        lines.append(f"\nForest, extrapolated (not measured): {b['forest_explain_marginal_rows_per_s']:,.0f} rows/s "
                     f"past start-up, so ~{b['forest_explain_1m_extrapolated_s'] / 3600:.1f} h for 1,000,000 rows; "
                     f"{b['forest_explain_marginal_rows_per_cpu_s']:,.0f} rows per CPU second, so "
                     f"~{b['forest_explain_1m_extrapolated_cpu_s'] / 3600:.1f} CPU hours.")
    if result.get("in_process"):
        lines += ["", "| one row, in process, CPU ms | preprocess | attribution | explain() | estimator predict | "
                  "ONNX predict |", "|---|---:|---:|---:|---:|---:|"]
        for name, m in result["in_process"].items():
            lines.append(f"| {LABELS[name]} | {m['preprocess']:.2f} | {m['attribution']:.2f} | {m['explain']:.2f} | "
                         f"{m['sklearn_predict']:.2f} | {m['onnx_predict']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--workspace", type=Path, help="keep the trained models here and reuse them (default: temp)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="hgb's predict --explain rows")
    parser.add_argument("--forest-rows", type=int, default=800, help="the forest's predict --explain rows")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--warmup-requests", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk warm-up before /explain's run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating /invocations rounds, route on vs off")
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args(argv)
    args.config_dir = args.config_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="bench-explain-"))
    workspace.mkdir(parents=True, exist_ok=True)
    groups = ProcessGroups()
    result: dict[str, Any] = {"benchmark": "explain", "created_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "machine": machine_facts(), "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        names = set(args.models) | (set() if args.skip_batch else {"hgb", "forest"})
        models = {name: train(name, args, workspace) for name in MODELS if name in names}
        if not args.skip_serving:
            workdir = workspace / "serving"
            workdir.mkdir(exist_ok=True)
            result["serving"] = {name: serve_model(models[name], args, groups, workdir) for name in args.models}
        if not args.skip_batch:
            result["batch"] = batch(models, args, workspace)
        result["in_process"] = {name: in_process(models[name], 15 if name == "forest" else 200)
                                for name in args.models}
    finally:
        groups.stop_all()
        if not args.workspace:
            shutil.rmtree(workspace, ignore_errors=True)
    output = RESULTS_DIR / f"explain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    result.setdefault("serving", {})
    print(markdown(result))
    print(f"\nJSON: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
