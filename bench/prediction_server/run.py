"""One benchmark run: each model's in-process times, then each server started, checked and driven in turn;
the command line (`python -m bench.prediction_server`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import prediction_server
from bench.common import (
    DEFAULT_CONFIG_DIR,
    PROJECT_ROOT,
    RESULTS_DIR,
    BenchmarkError,
    free_port,
    machine_facts,
    tail,
    wait_until_idle,
)
from bench.prediction_server.load import IDLE_THRESHOLD_CORES, floor_pairs, http, open_loop, run_wrk
from bench.prediction_server.models import (
    MODEL_LABELS,
    MODELS,
    PAYLOAD_ROWS,
    dataframe_split,
    in_process_child,
    in_process_predict,
    model_columns,
    payload_rows,
    train_and_export,
)
from bench.prediction_server.processes import ProcessGroups, set_autogroup_nice
from bench.prediction_server.report import markdown_report, targets
from bench.prediction_server.servers import ServerSpec, server_command, server_specs, v2_request, wait_ready

log = logging.getLogger("bench.prediction_server")


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=prediction_server.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
