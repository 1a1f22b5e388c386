"""Monitor benchmark: the drift monitor on 1,000,000 captured rows x the default dataset's columns.

Set-up (not measured): a champion is trained and registered from the wine data in a temp workspace
(`main.py --stage ingest ... evaluate` children, elasticnet, deployment target none), then capture files are
generated per the capture contract (docs/monitoring.md): `--files` gzip JSON-lines files under
<workspace>/capture/wine-quality/<today>/, rows bootstrapped from the wine data with a little noise, an hour old.

Measured: one child running `include.pipeline.run_monitor` for the champion (read the capture, compare every
feature and the predictions with the champion's training data and test-set predictions, render the HTML report,
log to MLflow), its wall time and peak RSS through os.wait4. Issue 13's target: <= 60 s and <= 2 GB on 2 cores.

    .venv/bin/python -m bench.monitor                      # 1,000,000 rows in 10 files
    .venv/bin/python -m bench.monitor --rows 100000 --keep # smaller, keep the workspace

Results: a Markdown line on stdout and a JSON file under bench/results/ (git-ignored), with the machine's load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import PROJECT_ROOT, RESULTS_DIR, machine_facts, stage_env, write_config_dir
from bench.pipeline_scaling import Measurement, run_measured

log = logging.getLogger(__name__)

MODEL = "wine-quality"
WINE = PROJECT_ROOT / "data" / "wine-quality" / "winequality-red.csv"
TARGET_SECONDS, TARGET_PEAK_MB = 60.0, 2048.0
CHILD = ("import sys; from include.ml.configuration import ConfigurationManager; from include.pipeline import "
         "run_monitor; print(run_monitor(ConfigurationManager(sys.argv[1]), 'bench-monitor').summary())")


def write_capture(capture_dir: Path, rows: int, files: int, when: datetime, seed: int = 0) -> int:
    """`rows` captured rows in `files` files (complete: .jsonl.gz): wines drawn again, plus noise of 5 % of a sd."""
    wines = pd.read_csv(WINE, sep=";").drop(columns=["quality"])
    rng = np.random.default_rng(seed)
    folder = capture_dir / MODEL / when.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = when.isoformat().replace("+00:00", "Z")
    columns, spread = list(wines.columns), wines.std().to_numpy()
    written = 0
    for index, count in enumerate(np.diff(np.linspace(0, rows, files + 1).astype(int))):
        sample = wines.iloc[rng.integers(0, len(wines), count)].to_numpy()
        sample = np.round(np.maximum(sample + rng.normal(0, 0.05, sample.shape) * spread, 0), 5)
        predictions = np.round(rng.normal(5.6, 0.6, count), 4)
        with gzip.open(folder / f"bench-{index:03d}.jsonl.gz", "wt", compresslevel=1) as out:
            for row, (values, prediction) in enumerate(zip(sample.tolist(), predictions.tolist())):
                inputs = json.dumps(dict(zip(columns, values)))
                out.write(f'{{"request_id": "b{index}-{row}", "row": 0, "timestamp": "{stamp}", "model_name": '
                          f'"{MODEL}", "model_version": "1", "inputs": {inputs}, "prediction": {prediction}, '
                          f'"probabilities": null}}\n')
        written += int(count)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="wait up to this long for a quiet machine")
    parser.add_argument("--keep", action="store_true", help="keep the temp workspace")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workspace = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    try:
        config_dir = write_config_dir(PROJECT_ROOT / "include" / "config", workspace / "config", "elasticnet", {})
        env = stage_env(None, workspace, {"MLOPS_DEPLOY_TARGET": "none", "MLOPS_MODEL_STORE": str(workspace / "models"),
                                          "MLOPS_CAPTURE_DIR": str(workspace / "capture")})
        for stage in ("ingest", "validate", "transform", "train", "evaluate"):
            run_measured([sys.executable, "main.py", "--stage", stage, "--run-id", "champion", "--config-dir",
                          str(config_dir)], env, workspace / "logs", f"setup-{stage}")
        log.info("writing %d captured rows in %d files", args.rows, args.files)
        rows = write_capture(workspace / "capture", args.rows, args.files,
                             datetime.now(timezone.utc) - timedelta(hours=1))
        measured: Measurement = run_measured([sys.executable, "-c", CHILD, str(config_dir)], env, workspace / "logs",
                                             "monitor", idle_timeout=args.idle_timeout)
        summary = (workspace / "logs" / "monitor.stdout").read_text().strip().splitlines()[-1]
        result = {"rows": rows, "files": args.files, "columns": 11, "measurement": measured.__dict__,
                  "summary": summary, "targets": {"wall_s": TARGET_SECONDS, "peak_mb": TARGET_PEAK_MB},
                  "machine": machine_facts(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"monitor-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"| {rows:,} rows x 11 columns, {args.files} files | {measured.wall_s:.1f} s "
              f"(target {TARGET_SECONDS:.0f}) | {measured.peak_mb:,.0f} MiB (target {TARGET_PEAK_MB:,.0f}) | "
              f"user {measured.user_s:.1f} s, sys {measured.sys_s:.1f} s | other load {measured.other_cores} cores |")
        print(f"monitor: {summary}\nresults: {out}")
        return 0 if measured.wall_s <= TARGET_SECONDS and measured.peak_mb <= TARGET_PEAK_MB else 1
    finally:
        if args.keep:
            print(f"workspace kept: {workspace}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
