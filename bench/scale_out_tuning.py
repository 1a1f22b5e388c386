"""The tune stage on 1 vs 2 workers: the same trial budget, the same search, the same code as ml_pipeline's mapped
tune_worker tasks (include/ml/components/tuning.py: open, N workers on one Optuna study, collect).

In a temp workspace it draws a seeded training table shaped by the default schema.yaml (bench/synthetic.py) and, for
each worker count, runs the stage in a fresh child interpreter: open the study, the workers as spawned processes
sharing the study's SQLite file (each pays its own interpreter start and imports, as a mapped tune_worker task
process does on Airflow, one worker included), collect. The speed-up is against that one worker process. A third run
times what `python main.py` does with tuning.workers 1: its one worker in the stage's own process, no start-up to
pay. The clock is the stage's wall time in the child.

So that both counts do the same work, every trial costs about the same: hist_gradient_boosting with a fixed
max_iter and no early stopping, searched over l2_regularization and min_samples_leaf only, no pruning
(prune_after_folds = cv_folds), n_trials as the only budget, one OpenMP thread per fit (the tune stage's own
setting). Parallel TPE proposes different trials than one worker does, so the trials themselves differ.

    .venv/bin/python -m bench.scale_out_tuning                  # the documented run (16 trials, 30,000 rows)
    .venv/bin/python -m bench.scale_out_tuning --trials 4 --rows 5000   # a quick check

Results: a Markdown table on stdout and a JSON file under bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bench.batch_predict import workspace_env
from bench.common import DEFAULT_CONFIG_DIR, PROJECT_ROOT, RESULTS_DIR, BenchmarkError, machine_facts, wait_until_idle

TARGET_SPEEDUP = 1.6  # issue 25: 2 workers vs 1 on a 2-core machine
MAX_ITER = 150


def write_config(source: Path, target: Path, trials: int, workers: int, storage: Path) -> Path:
    """The default config dir with the benchmark's search (see the module docstring)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "schema.yaml"):
        (target / name).write_bytes((source / name).read_bytes())
    params = yaml.safe_load((source / "params.yaml").read_text(encoding="utf-8"))
    params["model"] = {"family": "hist_gradient_boosting", "random_state": 42,
                       "hyperparameters": {"max_iter": MAX_ITER, "early_stopping": False}}
    params["tuning"] = {"enabled": True, "n_trials": trials, "timeout_seconds": None, "cv_folds": 3,
                        "prune_after_folds": 3, "seed": 42, "families": ["hist_gradient_boosting"],
                        "workers": workers, "storage": f"sqlite:///{storage}",
                        "search_space": {"hist_gradient_boosting": {
                            "l2_regularization": {"low": 0.001, "high": 10.0, "log": True},
                            "min_samples_leaf": {"low": 10, "high": 40}}}}
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return target


IN_PROCESS, PROCESSES = "in process", "processes"


def child(config_dir: Path, train: Path, out: Path, mode: str) -> None:
    """In a fresh interpreter: the tune stage on the training table (its workers in `mode`), timed; the result as
    JSON in `out`."""
    import pandas as pd

    from include.ml.components.tuning import collect_search, open_search, run_local_workers, search_worker
    from include.ml.configuration import ConfigurationManager

    job = ConfigurationManager(config_dir).tuning()
    frame = pd.read_parquet(train)
    output_dir = out.with_suffix("")
    output_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"bench-{job.tuning.workers}-{mode.replace(' ', '-')}"
    started = time.perf_counter()
    open_search(frame, job, run_id, output_dir)
    if mode == IN_PROCESS:
        search_worker(frame, job, run_id, output_dir, 0)
    else:
        run_local_workers(frame, job, run_id, output_dir)
    result = collect_search(job, run_id, output_dir)
    seconds = time.perf_counter() - started
    out.write_text(json.dumps({"workers": job.tuning.workers, "mode": mode, "seconds": seconds,
                               "trials": result.trials, "best": result.cv_mean, "metric": result.metric}))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.synthetic import from_schema, load_schema

    with tempfile.TemporaryDirectory(prefix="bench-scale-out-tuning-") as tmp:
        workspace = Path(tmp)
        schema = load_schema(DEFAULT_CONFIG_DIR)
        train = workspace / "train.parquet"
        from_schema(schema, args.rows, seed=25).to_parquet(train)
        env = workspace_env(workspace)
        results = []
        for workers, mode in [(w, PROCESSES) for w in args.workers] + [(1, IN_PROCESS)]:
            name = f"{workers}-{mode.replace(' ', '-')}"
            config_dir = write_config(DEFAULT_CONFIG_DIR, workspace / f"config-{name}", args.trials, workers,
                                      workspace / f"study-{name}.db")
            wait_until_idle(120)
            out = workspace / f"result-{name}.json"
            done = subprocess.run([sys.executable, "-m", "bench.scale_out_tuning", "--child", str(config_dir),
                                   str(train), str(out), "--mode", mode], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise BenchmarkError(f"tune on {workers} worker(s) {mode} failed:\n{done.stdout[-3000:]}"
                                     f"{done.stderr[-3000:]}")
            results.append(json.loads(out.read_text()))
    one = next(r for r in results if r["workers"] == 1 and r["mode"] == PROCESSES)
    for r in results:
        r["speedup"] = one["seconds"] / r["seconds"]
    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": args.rows,
            "trials": args.trials, "max_iter": MAX_ITER, "results": results, "machine": machine_facts()}


def table(report: dict[str, Any]) -> str:
    lines = [f"tune: {report['trials']} trials of hist_gradient_boosting (max_iter {report['max_iter']}, 3-fold CV, "
             f"no pruning) on {report['rows']:,} rows", "",
             "| workers | where | wall time (s) | trials | best CV | speed-up vs 1 worker process |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['workers']} | {r['mode']} | {r['seconds']:.1f} | {r['trials']} | {r['metric']} "
                     f"{r['best']:.4f} | {r['speedup']:.2f}x |")
    lines.append(f"\ntarget: >= {TARGET_SPEEDUP}x with 2 worker processes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", nargs=3, type=Path, metavar=("CONFIG_DIR", "TRAIN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=[IN_PROCESS, PROCESSES], default=PROCESSES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.mode)
        return 0
    report = run(args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"scale_out_tuning-{report['when'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\n(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
