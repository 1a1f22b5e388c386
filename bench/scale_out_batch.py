"""Partitioned batch scoring on 1 vs 2 worker processes: the same partitions, the same score_partition function
(include/release/partition_runs.py) that ml_batch_predict's mapped tasks run, the same combine.

In a temp workspace it trains the champion (`python main.py` on --config-dir, deployment off), generates a seeded
CSV of --rows rows shaped by schema.yaml (bench/synthetic.py, in a child), plans it into --partitions byte ranges (in a
child: the plan exports the bundle once), then for 1 and for 2 workers starts that many worker processes at once,
each scoring its share of the partitions (round robin) into a fresh staging folder, and waits for all of them:
the scoring wall time gives rows/s; each worker's own peak RSS (ru_maxrss) and CPU come from os.wait4. The combine
(the parts into one Parquet file) is timed apart: it is one task whatever the number of workers.

Children are fresh interpreters and this process never holds the data: on Linux a child's ru_maxrss starts from
the RSS of the process that spawned it.

    .venv/bin/python -m bench.scale_out_batch --rows 10000000            # the documented run
    .venv/bin/python -m bench.scale_out_batch --rows 200000 --keep       # a quick check

Results: a Markdown table on stdout and a JSON file under bench/results/ (git-ignored). What changes on a real
multi-host Celery fleet is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.batch_predict import workspace_env
from bench.common import (
    DEFAULT_CONFIG_DIR,
    PROJECT_ROOT,
    RESULTS_DIR,
    BenchmarkError,
    busy_cpu_seconds,
    machine_facts,
    wait_until_idle,
    write_config_dir,
)
from bench.synthetic import generate_in_child

log = logging.getLogger(__name__)

TARGET_SPEEDUP = 1.6  # issue 25: 2 workers vs 1 on a 2-core machine


def _config(config_dir: Path) -> Any:
    from include.ml.configuration import ConfigurationManager

    return ConfigurationManager(config_dir).batch_prediction()


def plan_command(args: argparse.Namespace, source: Path, output: Path, staging: Path, plan_file: Path) -> None:
    """Child: plan `source` into --partitions partitions, the plan as JSON in `plan_file`."""
    from include.release.partitions import plan_partitions

    plan = plan_partitions(_config(args.config_dir), str(source), str(output), staging, "champion",
                           partitions=args.partitions)
    plan_file.write_text(json.dumps(plan.describe()))


def worker_command(config_dir: Path, plan_file: Path, staging: Path, indexes: list[int]) -> dict[str, Any]:
    """Child: score the partitions `indexes` of the plan, its parts in `staging`; their row counts and seconds."""
    from include.release.partition_runs import score_partition
    from include.release.partitions import BatchPlan

    plan = BatchPlan.of({**json.loads(plan_file.read_text()), "staging": str(staging)})
    config = _config(config_dir)
    started, rows = time.perf_counter(), 0
    for index in indexes:
        rows += score_partition(config, plan, plan.partitions[index]).rows_in
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 3)}


def combine_command(config_dir: Path, plan_file: Path, staging: Path, output: Path) -> dict[str, Any]:
    from include.release.partition_runs import combine
    from include.release.partitions import BatchPlan

    plan = BatchPlan.of({**json.loads(plan_file.read_text()), "staging": str(staging), "output_uri": str(output)})
    result = combine(_config(config_dir), plan)
    return {"rows": result.rows, "seconds": result.seconds}


def child(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "bench.scale_out_batch", *args], cwd=PROJECT_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)


def wait_all(children: list[subprocess.Popen]) -> list[dict[str, Any]]:
    """Wait for every child with os.wait4: its rusage, and the JSON it printed last."""
    usages = {}
    while len(usages) < len(children):
        pid, status, usage = os.wait4(-1, 0)
        usages[pid] = (os.waitstatus_to_exitcode(status), usage)
    measured = []
    for process in children:
        code, usage = usages[process.pid]
        process.returncode = code
        out = process.stdout.read().decode() if process.stdout else ""
        if code != 0:
            raise BenchmarkError(f"worker {process.args} failed ({code}); see its log")
        measured.append({**json.loads(out.strip().splitlines()[-1]), "peak_mb": round(usage.ru_maxrss / 1024, 1),
                         "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)})
    return measured


def measure(workers: int, args: argparse.Namespace, env: dict[str, str], plan_file: Path,
            workspace: Path) -> dict[str, Any]:
    staging = workspace / f"parts-{workers}"
    partitions = len(json.loads(plan_file.read_text())["partitions"])
    shares = [list(range(w, partitions, workers)) for w in range(workers)]
    wait_until_idle(args.idle_timeout)
    busy_before, started = busy_cpu_seconds(), time.perf_counter()
    children = [child(["worker", str(args.config_dir), str(plan_file), str(staging), ",".join(map(str, share))],
                      env, workspace / f"worker-{workers}-{w}.log") for w, share in enumerate(shares)]
    measured = wait_all(children)
    wall = time.perf_counter() - started
    busy = (busy_cpu_seconds() or 0.0) - (busy_before or 0.0)
    rows = sum(m["rows"] for m in measured)
    output = workspace / f"scored-{workers}.parquet"
    combining = child(["combine", str(args.config_dir), str(plan_file), str(staging), str(output)], env,
                      workspace / f"combine-{workers}.log")
    (combined,) = wait_all([combining])
    if combined["rows"] != rows:
        raise BenchmarkError(f"{workers} worker(s): combined {combined['rows']} rows, scored {rows}")
    return {"workers": workers, "rows": rows, "wall_s": round(wall, 2), "rows_per_s": round(rows / wall),
            "per_worker": measured, "combine_s": combined["seconds"], "combine_peak_mb": combined["peak_mb"],
            "other_cores": round(max(busy - sum(m["cpu_s"] for m in measured), 0.0) / wall, 2)}


def run(args: argparse.Namespace, workspace: Path) -> dict[str, Any]:
    env = workspace_env(workspace)
    trained = subprocess.run([sys.executable, "main.py", "--config-dir", str(args.config_dir), "--run-id", "bench"],
                             cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if trained.returncode != 0:
        raise BenchmarkError(f"training the champion failed:\n{trained.stderr[-4000:]}")
    source = workspace / "big.csv"
    generated = generate_in_child(args.config_dir, args.rows, args.seed, source)
    log.info("generated %d rows (%.0f MB) in %.0fs", args.rows, source.stat().st_size / 2**20, generated)
    plan_file = workspace / "plan.json"
    planning = child(["plan", str(args.config_dir), str(source), str(workspace / "scored.parquet"),
                      str(workspace / "parts"), str(plan_file), str(args.partitions)], env, workspace / "plan.log")
    wait_all([planning])
    runs = [measure(workers, args, env, plan_file, workspace) for workers in (1, 2)]
    for measured in runs:
        log.info("%d worker(s): %.1fs, %.0f rows/s, peak %s MB", measured["workers"], measured["wall_s"],
                 measured["rows_per_s"], [m["peak_mb"] for m in measured["per_worker"]])
    return {"rows": args.rows, "csv_bytes": source.stat().st_size, "partitions": args.partitions, "runs": runs,
            "speedup": round(runs[0]["wall_s"] / runs[1]["wall_s"], 2)}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| workers | scoring wall s | rows/s | peak RSS per worker (MB) | CPU s per worker | combine s | "
             "other load (cores) |", "|---:|---:|---:|---|---|---:|---:|"]
    for r in result["runs"]:
        peaks = ", ".join(f"{m['peak_mb']:.0f}" for m in r["per_worker"])
        cpu = ", ".join(f"{m['cpu_s']:.1f}" for m in r["per_worker"])
        lines.append(f"| {r['workers']} | {r['wall_s']:.1f} | {r['rows_per_s']:,} | {peaks} | {cpu} | "
                     f"{r['combine_s']:.1f} | {r['other_cores']:.2f} |")
    lines.append(f"\n{result['rows']:,} rows in {result['partitions']} partitions: 2 workers vs 1, "
                 f"{result['speedup']:.2f}x (target {TARGET_SPEEDUP}x).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("plan", "worker", "combine"):  # a child
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO lines per chunk's checker
        command, rest = argv[0], argv[1:]
        if command == "plan":
            config_dir, source, output, staging, plan_file, partitions = rest
            plan_command(argparse.Namespace(config_dir=Path(config_dir), partitions=int(partitions)), Path(source),
                         Path(output), Path(staging), Path(plan_file))
            print(json.dumps({"planned": True}))
        elif command == "worker":
            print(json.dumps(worker_command(Path(rest[0]), Path(rest[1]), Path(rest[2]),
                                            [int(i) for i in rest[3].split(",") if i])))
        else:
            print(json.dumps(combine_command(Path(rest[0]), Path(rest[1]), Path(rest[2]), Path(rest[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows to score (default: 10000000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the file (default: 4)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default: include/config")
    parser.add_argument("--family", help="train this model family, its defaults, no tuning (default: as params.yaml "
                        "says, tuning included)")
    parser.add_argument("--seed", type=int, default=20240601, help="numpy default_rng seed for the data")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="before each measurement, wait up to this many seconds for a quiet machine")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument("--output", type=Path, help="JSON results (default: bench/results/scale_out_batch-<time>.json)")
    args = parser.parse_args(argv)
    args.config_dir = args.config_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    workspace = Path(tempfile.mkdtemp(prefix="bench-scale-out-batch-"))
    try:
        if args.family:
            args.config_dir = write_config_dir(args.config_dir, workspace / "config", args.family, {})
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        result = {"benchmark": "scale_out_batch", "created_at": created, "machine": machine_facts(),
                  "family": args.family or "as configured", **run(args, workspace)}
    finally:
        if args.keep:
            log.info("kept %s", workspace)
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    output = args.output or RESULTS_DIR / f"scale_out_batch-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
