"""Prediction capture's cost: single-row throughput of our server with capture at 100 % vs capture off.

It trains the pipeline's default champion (or takes --bundle), then runs our gunicorn server on it
(SERVING_* defaults, micro-batching on) alternately without and with SERVING_CAPTURE_DIR (sample 1.0),
--rounds times each, and drives each run with wrk (1 thread, N connections) POSTing one row to
/invocations, as bench/prediction_server/ does (its process, wrk and model helpers are reused).
Alternating the modes spreads the load of other processes on the machine over both. With capture on,
it also counts the rows written and checks each answered request is there.

It prints the medians (req/s, p50, p99), the on/off ratio and the target (cost <= 10 %), and writes the
raw results to bench/results/capture-<ts>.json. About 3 minutes on 2 cores with an existing bundle.

    .venv/bin/python -m bench.capture_overhead                         # trains the default champion first
    .venv/bin/python -m bench.capture_overhead --bundle models/wine-quality/3 --rounds 3 --duration 10

Needs wrk (Debian: `apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_CONFIG_DIR, RESULTS_DIR, BenchmarkError, free_port, machine_facts, wait_until_idle
from bench.prediction_server import (
    ProcessGroups,
    ServerSpec,
    dataframe_split,
    model_columns,
    payload_rows,
    run_wrk,
    server_command,
    train_and_export,
    wait_ready,
)

log = logging.getLogger("bench.capture_overhead")
TARGET_COST = 0.10  # capture at 100 % may cost at most this fraction of single-row throughput (issue 13)


def captured_rows(directory: Path) -> int:
    from serving.capture import closed_files, read_records

    return sum(len(read_records(path)) for path in closed_files(directory))


def one_run(groups: ProcessGroups, bundle: Path, body_file: Path, capture: Path | None, args: argparse.Namespace,
            workdir: Path) -> dict[str, Any]:
    env = {"SERVING_PUBLIC_KEY": str(args.public_key), **({"SERVING_CAPTURE_DIR": str(capture)} if capture else {})}
    spec = ServerSpec("capture_on" if capture else "capture_off", "", "ours", args.workers, env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd, full_env = server_command(spec, bundle, port, workdir)
    logfile = workdir / f"{spec.key}.log"
    proc = groups.start(cmd, full_env, logfile)
    try:
        wait_ready(proc, f"{url}/ready", logfile)
        warm = run_wrk(groups, f"{url}/invocations", body_file, args.connections, args.warmup, workdir, proc.pid)
        run = run_wrk(groups, f"{url}/invocations", body_file, args.connections, args.duration, workdir, proc.pid)
    finally:
        groups.stop(proc)  # graceful: every queued capture row is written before the workers exit
    run.pop("wrk_stdout")
    run["mode"] = spec.key
    # The server's CPU per answer: what capture costs in capacity, whatever other processes took meanwhile.
    run["server_cpu_ms_per_req"] = 1000 * run["server_cores"] * run["seconds"] / max(run["requests"], 1)
    if capture:
        # wrk counts the answers it received; a request in flight when it stops is answered (and captured) too.
        run["captured_rows"] = captured_rows(capture)
        run["answered"] = warm["requests"] + run["requests"]
    log.info("%s: %.0f req/s, p50 %.1f ms, p99 %.1f ms, server %.2f cores (%.2f ms CPU/request), other %.2f%s",
             spec.key, run["req_per_s"], run["p50_ms"], run["p99_ms"], run["server_cores"],
             run["server_cpu_ms_per_req"], run["other_cores"] or 0.0,
             f", {run['captured_rows']} rows captured for {run['answered']} answers" if capture else "")
    return run


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["mode"] == mode)

    keys = ("req_per_s", "p50_ms", "p99_ms", "server_cores", "server_cpu_ms_per_req", "other_cores")
    out: dict[str, Any] = {mode: {key: median(mode, key) for key in keys} for mode in ("capture_off", "capture_on")}
    out["ratio_on_off"] = out["capture_on"]["req_per_s"] / out["capture_off"]["req_per_s"]
    out["cost"] = 1 - out["ratio_on_off"]
    # Requests per CPU second: the throughput a server gets from the same cores.
    out["cpu_ratio_on_off"] = out["capture_off"]["server_cpu_ms_per_req"] / out["capture_on"]["server_cpu_ms_per_req"]
    out["cpu_cost"] = 1 - out["cpu_ratio_on_off"]
    out["target_met"] = out["cost"] <= TARGET_COST and out["cpu_cost"] <= TARGET_COST
    on = [r for r in runs if r["mode"] == "capture_on"]
    out["captured_every_answer"] = all(r["captured_rows"] >= r["answered"] for r in on)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capture_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="an exported bundle (<store>/<version>); default: train one")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--public-key", type=Path, help="the key bundles are signed with (default: the config's "
                                                        "signing.public_key, which main.py export signs for)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, alternating off and on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.public_key is None:
        from include.ml.configuration import ConfigurationManager

        args.public_key = ConfigurationManager(args.config_dir, env={}).config.signing.public_key
    groups = ProcessGroups()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
            workdir = Path(tmp)
            bundle = args.bundle.resolve() if args.bundle else train_and_export("rf", args.config_dir,
                                                                               workdir / "train")
            columns = model_columns(bundle)
            body_file = workdir / "one-row.json"
            body_file.write_bytes(dataframe_split(columns, payload_rows(args.config_dir, columns, 1)))
            load = wait_until_idle(60)
            log.info("other processes use %.2f cores before the runs", load or 0.0)
            runs = []
            for round_ in range(args.rounds):
                for capture in (None, workdir / f"capture-{round_}"):
                    runs.append(one_run(groups, bundle, body_file, capture, args, workdir))
    except BenchmarkError as exc:
        log.error("%s", exc)
        return 1
    finally:
        groups.stop_all()
    summary = summarize(runs)
    result = {"benchmark": "capture_overhead", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_facts(), "other_cores_before": load, "args": {k: str(v) for k, v in
                                                                              vars(args).items()},
              "runs": runs, "summary": summary}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"capture-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    off, on = summary["capture_off"], summary["capture_on"]
    print(f"\n| single row, {args.connections} connections, median of {args.rounds} | req/s | p50 ms | p99 ms | "
          "server cores | server CPU ms/request | other processes, cores |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, row in (("capture off", off), ("capture 100 %", on)):
        print(f"| {label} | {row['req_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
              f"{row['server_cores']:.2f} | {row['server_cpu_ms_per_req']:.3f} | {row['other_cores'] or 0:.2f} |")
    print(f"\ncapture on / off: req/s {summary['ratio_on_off']:.3f} (cost {100 * summary['cost']:.1f} %), requests "
          f"per server CPU second {summary['cpu_ratio_on_off']:.3f} (cost {100 * summary['cpu_cost']:.1f} %); "
          f"target <= {100 * TARGET_COST:.0f} %: {'met' if summary['target_met'] else 'NOT met'}; every answer "
          f"captured: {summary['captured_every_answer']}; results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
