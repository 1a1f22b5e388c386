"""Benchmark: the ml_pipeline DAG under the embedded Airflow stack vs `python main.py`, same data.

Starts a private stack (scripts/airflow_stack.sh) in a temp home on free ports, then alternates
--repeats runs of each:
  * `python main.py` as a subprocess: wall time, and each stage's in-process work time (its own
    "[i/5] stage done in Xs" lines) - the work a task has to do;
  * the DAG triggered through the REST API: trigger-to-success time, each task's duration, and the
    gap between one task ending and the next starting (scheduling latency).
Per task, overhead = task duration - the stage's work time (process start, imports, Airflow's
task runner) + the gap before it. Prints a Markdown table of medians; writes JSON to bench/results/.

    .venv/bin/python -m bench.dag_vs_main [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import PROJECT_ROOT, free_port

STAGES = ("ingest", "validate", "transform", "train", "evaluate")
DAG_ID = "ml_pipeline"
log = logging.getLogger(__name__)


def run_main(env: dict[str, str], run_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "main.py", "--run-id", run_id], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"main.py failed:\n{done.stderr[-3000:]}")
    work = {m[1]: float(m[2]) for m in re.finditer(r"\[\d/5\] (\w+) done in ([\d.]+)s", done.stdout)}
    return {"wall": wall, "work": work}


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_dag(client: Any) -> dict[str, Any]:
    started = time.perf_counter()
    run_id = client.trigger(DAG_ID, note="bench/dag_vs_main.py")["dag_run_id"]
    client.wait_for_run(DAG_ID, run_id, timeout=900, poll=0.5)
    wall = time.perf_counter() - started
    tis = {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, run_id)}
    run = client.dag_run(DAG_ID, run_id)
    durations, gaps, previous_end = {}, {}, _time(run["start_date"])
    for stage in STAGES:
        ti = tis[stage]
        durations[stage] = float(ti["duration"])
        gaps[stage] = _time(ti["start_date"]) - previous_end
        previous_end = _time(ti["end_date"])
    return {"wall": wall, "duration": durations, "gap": gaps}


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(main_runs: list[dict], dag_runs: list[dict], repeats: int) -> str:
    main_wall, dag_wall = median([r["wall"] for r in main_runs]), median([r["wall"] for r in dag_runs])
    lines = [
        f"Medians of {repeats} runs each, alternating, same data and params "
        f"(`{os.cpu_count()}` cores, Python {sys.version.split()[0]}).",
        "",
        "| | end to end (s) | ratio |",
        "|---|---:|---:|",
        f"| `python main.py` (subprocess, imports included) | {main_wall:.1f} | 1.00 |",
        f"| ml_pipeline DAG, trigger to success | {dag_wall:.1f} | {dag_wall / main_wall:.2f} |",
        "",
        "| task | work (s) | task duration (s) | wait before start (s) | overhead (s) | overhead share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage in STAGES:
        work = median([r["work"][stage] for r in main_runs])
        duration = median([r["duration"][stage] for r in dag_runs])
        gap = median([r["gap"][stage] for r in dag_runs])
        overhead = duration - work + gap
        lines.append(f"| {stage} | {work:.1f} | {duration:.1f} | {gap:.1f} | {overhead:.1f} | "
                     f"{overhead / (duration + gap):.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from scripts.airflow_client import AirflowClient

    base = Path(tempfile.mkdtemp(prefix="bench-dag-"))
    api_port, mlflow_port = free_port(), free_port()
    password = secrets.token_urlsafe(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_"))}
    env.update(AIRFLOW_STACK_HOME=str(base / "home"), AIRFLOW_STACK_API_PORT=str(api_port),
               AIRFLOW_STACK_MLFLOW_PORT=str(mlflow_port), AIRFLOW_STACK_ADMIN_PASSWORD=password,
               AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
               MLOPS_ARTIFACTS_ROOT=str(base / "artifacts"), MLOPS_TRACKING_URI=f"sqlite:///{base}/mlflow.db",
               MLOPS_ARTIFACT_LOCATION=str(base / "mlartifacts"))
    stack = [str(PROJECT_ROOT / "scripts" / "airflow_stack.sh")]
    subprocess.run([*stack, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        client = AirflowClient(f"http://127.0.0.1:{api_port}", "admin", password)
        client.wait_for_dag(DAG_ID)
        client.unpause(DAG_ID)
        run_main(env, "warm-up")  # first run creates the MLflow database; not measured
        main_runs, dag_runs = [], []
        for i in range(args.repeats):
            main_runs.append(run_main(env, f"bench-{i}"))
            dag_runs.append(run_dag(client))
            log.info("repeat %d: main.py %.1fs, DAG %.1fs", i + 1, main_runs[-1]["wall"], dag_runs[-1]["wall"])
    finally:
        subprocess.run([*stack, "down"], env=env, check=False, stdout=subprocess.DEVNULL)
    table = report(main_runs, dag_runs, args.repeats)
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "dag_vs_main.json").write_text(json.dumps({"main": main_runs, "dag": dag_runs}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
