"""Batch prediction benchmark: `python main.py predict` on a million generated rows of the wine schema.

In a temp workspace it trains the default champion (`python main.py` on the default config, deployment off: the
random forest of params.yaml), generates a seeded CSV of --rows rows shaped by schema.yaml (target included, as a
user's file may have it; bench/synthetic.py's schema generator, in a child process), then measures
`main.py predict` as a child (wall time, CPU, peak RSS via os.wait4) writing Parquet and CSV, and a start-up
baseline on the 1,599-row wine file (process start, imports, export and load of the bundle). It also times the
Great Expectations check of one chunk in this process, to show what validating every chunk costs.

Target (issue 15): <= 60 s and <= 1.5 GB peak for 1,000,000 rows on 2 cores. A benchmark, not a test.

    .venv/bin/python -m bench.batch_predict                    # 1,000,000 rows
    .venv/bin/python -m bench.batch_predict --rows 200000 --keep

Results: a Markdown table on stdout and a JSON file under bench/results/ (git-ignored). Before each measurement it
waits (up to --idle-timeout) for other processes to go quiet, and records the CPU they used anyway.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_CONFIG_DIR, PROJECT_ROOT, RESULTS_DIR, BenchmarkError, machine_facts, stage_env
from bench.pipeline_scaling import Measurement, run_measured
from bench.synthetic import generate_in_child, load_schema

log = logging.getLogger(__name__)

TARGET_SECONDS = 60.0
TARGET_PEAK_MB = 1536.0
WINE_CSV = PROJECT_ROOT / "data" / "wine-quality" / "winequality-red.csv"


def workspace_env(workspace: Path) -> dict[str, str]:
    """Every output (artifacts, MLflow, the model store, the signing keys) inside `workspace`; no deployment."""
    return stage_env(None, workspace, {
        "MLOPS_MODEL_STORE": str(workspace / "models"), "MLOPS_DEPLOY_TARGET": "none",
        "MLOPS_SIGNING_KEY": str(workspace / "keys" / "bundle-signing.key"),
        "MLOPS_SIGNING_PUBLIC_KEY": str(workspace / "keys" / "bundle-signing.pub")})


def predict_command(config_dir: Path, source: Path, output: Path) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "main.py"), "predict", "--config-dir", str(config_dir),
            "--input", str(source), "--output", str(output)]


def gx_seconds_per_chunk(config_dir: Path, source: Path, chunk_rows: int) -> float:
    """The Great Expectations check of one chunk of `source`, as predict runs it (median of 3, after a warm-up)."""
    import pandas as pd

    from include.ml.components.validation import frame_checker

    schema = load_schema(config_dir)
    check = frame_checker(schema.model_copy(update={"columns": schema.features}))
    chunk = pd.read_csv(source, sep=";", nrows=chunk_rows).drop(columns=schema.target)
    check(chunk)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        check(chunk)
        times.append(time.perf_counter() - started)
    return sorted(times)[1]


def run(args: argparse.Namespace, workspace: Path) -> dict[str, Any]:
    env = workspace_env(workspace)
    logs = workspace / "logs"
    started = time.perf_counter()
    trained = subprocess.run([sys.executable, "main.py", "--config-dir", str(args.config_dir), "--run-id", "bench"],
                             cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if trained.returncode != 0:
        raise BenchmarkError(f"training the champion failed:\n{trained.stderr[-4000:]}")
    log.info("trained the champion in %.0fs", time.perf_counter() - started)
    source = workspace / "big.csv"
    generated = generate_in_child(args.config_dir, args.rows, args.seed, source)
    log.info("generated %d rows (%.0f MB) in %.0fs", args.rows, source.stat().st_size / 2**20, generated)

    measured: dict[str, Measurement] = {}
    runs = {"baseline (1,599 wine rows)": (WINE_CSV, "small.parquet"),
            f"{args.rows:,} rows -> Parquet": (source, "big.parquet"),
            f"{args.rows:,} rows -> CSV": (source, "big.csv.out.csv")}
    for label, (data, output) in runs.items():
        command = predict_command(args.config_dir, data, workspace / output)
        measured[label] = run_measured(command, env, logs, label.split()[0].replace(",", ""), args.idle_timeout)
        log.info("%s: %.1fs, %.0f MB peak (other processes: %.2f cores)", label, measured[label].wall_s,
                 measured[label].peak_mb, measured[label].other_cores)
    chunk_rows = 100_000
    return {"rows": args.rows, "csv_bytes": source.stat().st_size, "chunk_rows": chunk_rows,
            "gx_seconds_per_chunk": round(gx_seconds_per_chunk(args.config_dir, source, chunk_rows), 3),
            "runs": {label: asdict(m) for label, m in measured.items()}}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| run | wall s | / 60 s target | peak MB | / 1,536 MB target | CPU s | other load (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m in result["runs"].items():
        lines.append(f"| {label} | {m['wall_s']:.1f} | {m['wall_s'] / TARGET_SECONDS:.2f} | {m['peak_mb']:.0f} | "
                     f"{m['peak_mb'] / TARGET_PEAK_MB:.2f} | {m['user_s'] + m['sys_s']:.1f} | {m['other_cores']:.2f} |")
    chunks = -(-result["rows"] // result["chunk_rows"])
    lines.append(f"\nGreat Expectations check of one {result['chunk_rows']:,}-row chunk: "
                 f"{result['gx_seconds_per_chunk']:.2f}s, so ~{chunks * result['gx_seconds_per_chunk']:.1f}s "
                 f"of validation for {chunks} chunks.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to score (default: 1000000)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default: include/config")
    parser.add_argument("--seed", type=int, default=20240601, help="numpy default_rng seed for the data")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="before each measurement, wait up to this many seconds for a quiet machine")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument("--output", type=Path, help="JSON results (default: bench/results/batch_predict-<time>.json)")
    args = parser.parse_args(argv)
    args.config_dir = args.config_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # ~200 INFO lines about its own API docs
    workspace = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        result = {"benchmark": "batch_predict", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine_facts(), **run(args, workspace)}
    finally:
        if args.keep:
            log.info("kept %s", workspace)
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    output = args.output or RESULTS_DIR / f"batch_predict-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))
    print(f"\nJSON: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
