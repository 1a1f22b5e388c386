"""The stand-in tables end to end, as a new user would run them, against a default HistGradientBoosting.

For each stand-in of bench/tables.py (issue 21's "Done when": a 300k+ row flights table, a 50k-row table with
ordered categories, a small survival-style classification table), in its own temporary workspace:

1. write the CSV (seeded, in a child process, so this process stays small: a child's peak RSS on Linux starts
   from the RSS of the process that started it);
2. `python main.py init --data <csv> --target <col> --out <dir>`, then `python main.py --config-dir <dir>`, each as
   a child with every output inside the workspace (MLOPS_ARTIFACTS_ROOT, MLOPS_TRACKING_URI=sqlite:///...,
   MLOPS_ARTIFACT_LOCATION, MLOPS_MODEL_STORE, MLOPS_DEPLOY_TARGET=none): wall time and peak RSS via os.wait4,
   then the sizes of the model store, the artifacts and the MLflow store (database + artifact location);
3. in a child (`python -m bench.real_tables compare ...`): read that run's split
   (artifacts/<run id>/transform/train.parquet and test.parquet), score the test split with
   `python main.py predict` (which exports the champion into the model store, so its size is the store's), fit a
   default HistGradientBoostingRegressor / Classifier (random_state=0, nothing else set) on the same training
   split, and compare test metrics: RMSE for regression, log loss for classification. The champion's metric is
   the evaluate stage's (artifacts/<run id>/evaluate/result.json) when it reports it, else the one computed from
   the predictions of `main.py predict` on the test split;
4. for the flights table (or --predict-table), batch-predict --predict-rows rows (default 1,000,000: the same
   generator with another seed, target column removed) with `python main.py predict ... --output <file>.parquet`:
   wall time and peak RSS.

A step that fails is reported with its stage and message, and the run goes on with the next table: the pipeline
is being fixed while this harness exists, so it reports what happens rather than stopping at the first failure.

What the default HistGradientBoosting model gets from the split (a simple, stated default, not a tuned one):
- rows with a missing target are dropped (the pipeline's split should already hold none);
- datetime columns, and text columns whose values all parse as ISO 8601 date-times, become float parts: year,
  month, day, day of week and hour (NaN where missing);
- other integer or text columns with one distinct value per training row (row ids, names) are dropped;
- other text columns with at most 255 distinct training values become pandas categoricals, which the model splits
  natively (categorical_features="from_dtype"); values unseen in training become missing;
- text columns with more values become ordinal codes (sorted training values; unseen and missing: NaN), used as a
  number;
- booleans become 0/1; numbers are used as they are, missing values included.

Targets checked (issue 21): metric within 2 % of the default model's RMSE, or log loss at most 0.02 worse; the
flights table trains end to end in <= 180 s with <= 3 GB peak RSS and a model store <= 50 MB, and batch-predicts
1M rows in <= 60 s with <= 1.5 GB.

This is a benchmark, not a test: at full size it takes many minutes on 2 cores.

    .venv/bin/python -m bench.real_tables                                   # all three, full size, 1M predict
    .venv/bin/python -m bench.real_tables --tables flights --rows 20000 --predict-rows 50000   # a quick look
    .venv/bin/python -m bench.real_tables --report bench/results/real_tables-<time>.json

Results: a Markdown table on stdout and a JSON file under bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import (
    PROJECT_ROOT,
    RESULTS_DIR,
    BenchmarkError,
    busy_cpu_seconds,
    machine_facts,
    stage_env,
    wait_until_idle,
)
from bench.tables import STAND_INS

log = logging.getLogger(__name__)

RUN_ID = "bench"
NATIVE_CATEGORIES = 255  # HistGradientBoosting's limit for a native categorical feature (max_bins)
TOLERANCE = {"regression": ("rmse", "ratio", 1.02), "classification": ("log_loss", "difference", 0.02)}
# The flights table's resource targets (issue 21).
FLIGHTS_TRAIN_S, FLIGHTS_TRAIN_MB, FLIGHTS_STORE_MB = 180.0, 3072.0, 50.0
PREDICT_S, PREDICT_MB = 60.0, 1536.0
DEFAULT_PREDICT_ROWS = 1_000_000
CHILD_TIMEOUT_S = 3600.0
TAIL_CHARS = 2000


# --------------------------------------------------------------------------- running children


@dataclass
class Step:
    """One child process: what it was, how long it took, its peak RSS, and why it failed (if it did)."""

    name: str
    ok: bool
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_mb: float = 0.0
    returncode: int | None = None
    other_cores: float | None = None  # CPU other processes used meanwhile (0: the machine was ours)
    stage: str | None = None  # where it failed: a pipeline stage, "init", "configuration", ...
    message: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)  # main.py's "[i/n] stage done in Xs" lines


def run_child(name: str, cmd: list[str], env: dict[str, str], log_dir: Path, timeout: float) -> tuple[Step, str, str]:
    """Run `cmd` from the project root, wait for it with os.wait4 (killing its process group after `timeout` s);
    return the measurement and the child's stdout and stderr."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        busy_before = busy_cpu_seconds()
        started = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                timed_out = True
                os.killpg(child.pid, signal.SIGKILL)  # the child's own group: it and whatever it started
                _, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.1)
        wall = time.perf_counter() - started
        busy_after = busy_cpu_seconds()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    cpu = usage.ru_utime + usage.ru_stime
    other = None
    if busy_before is not None and busy_after is not None and wall > 0:
        other = round(max(0.0, (busy_after - busy_before - cpu) / wall), 2)
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    step = Step(name, child.returncode == 0 and not timed_out, round(wall, 2), round(cpu, 2),
                round(usage.ru_maxrss / 1024, 1), child.returncode, other)
    if timed_out:
        step.stage, step.message = "timeout", f"killed after {timeout:.0f}s"
    return step, stdout, stderr


def stage_seconds(stdout: str) -> dict[str, float]:
    """main.py's progress lines: "[3/8] transform done in 2.1s"."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\[\d+/\d+\] (\w+) done in ([\d.]+)s", stdout, re.M)}


def failure(stdout: str, stderr: str, returncode: int | None, command: str) -> tuple[str, str]:
    """Where a main.py child failed and why, from what it printed: its own error line ("pipeline failed in stage
    S: ...", "configuration error: ...", "init failed: ..."), else the last line of a traceback, else the signal."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    started = re.findall(r"^\[\d+/\d+\] (\w+) \.\.\.", stdout, re.M)
    done = stage_seconds(stdout)
    running = next((s for s in reversed(started) if s not in done), None)
    for line in reversed(lines):
        if match := re.match(r"pipeline failed in stage (\w+): (.*)", line):
            return match.group(1), _clip(match.group(2) + _continuation(lines, line))
        if match := re.match(r"configuration error: (.*)", line):
            return "configuration", _clip(match.group(1) + _continuation(lines, line))
        if match := re.match(rf"{command} failed: (.*)", line):
            return command, _clip(match.group(1) + _continuation(lines, line))
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        why = " (the out-of-memory killer?)" if -returncode == signal.SIGKILL else ""
        return running or command, f"killed by {name}{why}"
    exception = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)), None)
    return running or command, _clip(exception or (lines[-1] if lines else f"exit code {returncode}, no output"))


def _continuation(lines: list[str], line: str) -> str:
    """A multi-line error message: the lines after the first one, joined."""
    rest = lines[lines.index(line) + 1:]
    return (" " + " ".join(item.strip() for item in rest)) if rest else ""


def _clip(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- one table


def workspace_env(workspace: Path) -> dict[str, str]:
    """Every output of the pipeline inside `workspace`; no deployment."""
    return stage_env(None, workspace, {
        "MLOPS_MODEL_STORE": str(workspace / "models"), "MLOPS_DEPLOY_TARGET": "none",
        "MLOPS_SIGNING_KEY": str(workspace / "keys" / "bundle-signing.key"),
        "MLOPS_SIGNING_PUBLIC_KEY": str(workspace / "keys" / "bundle-signing.pub"),
        "MLOPS_CAPTURE_DIR": str(workspace / "capture")})


def directory_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_table(name: str, rows: int, seed: int, predict_rows: int, workspace: Path, args: argparse.Namespace
              ) -> dict[str, Any]:
    table = STAND_INS[name]
    workspace.mkdir(parents=True, exist_ok=True)
    env, logs = workspace_env(workspace), workspace / "logs"
    csv_path, config_dir = workspace / f"{name}.csv", workspace / "config"
    result: dict[str, Any] = {"table": name, "rows": rows, "seed": seed, "target": table.target, "task": table.task,
                              "stands_in_for": table.stands_in_for, "steps": {}}

    def measured(step_name: str, cmd: list[str], command: str, quiet: bool = True) -> tuple[Step, str]:
        if quiet and args.idle_timeout > 0:  # a measurement that matters: wait for other processes to quieten
            wait_until_idle(args.idle_timeout)
        step, stdout, stderr = run_child(step_name, cmd, env, logs, args.timeout)
        step.stage_seconds = stage_seconds(stdout)
        if not step.ok and step.message is None:
            step.stage, step.message = failure(stdout, stderr, step.returncode, command)
        result["steps"][step_name] = asdict(step)
        log.info("%s %s: %s in %.1fs, peak %.0f MB%s", name, step_name, "ok" if step.ok else "FAILED", step.wall_s,
                 step.peak_mb, "" if step.ok else f" - {step.stage}: {step.message}")
        return step, stdout

    generated, _ = measured("generate", python("-m", "bench.tables", name, "--rows", str(rows), "--seed", str(seed),
                                               "--out", str(csv_path)), "generate", quiet=False)
    if not generated.ok:
        return result
    result["csv_mb"] = directory_mb(csv_path)
    init, _ = measured("init", python("main.py", "init", "--data", str(csv_path), "--target", table.target,
                                      "--out", str(config_dir)), "init")
    if not init.ok:
        return result
    train, _ = measured("train", python("main.py", "--config-dir", str(config_dir), "--run-id", RUN_ID), "pipeline")
    run_dir = workspace / "artifacts" / RUN_ID
    if (run_dir / "transform" / "train.parquet").exists():  # the split exists even if a later stage failed
        compare_json = workspace / "compare" / "compare.json"
        measured("compare", python("-m", "bench.real_tables", "compare", "--run-dir", str(run_dir), "--config-dir",
                                   str(config_dir), "--target", table.target, "--task", table.task,
                                   "--out", str(compare_json)), "compare", quiet=False)
        if compare_json.exists():
            result["comparison"] = json.loads(compare_json.read_text(encoding="utf-8"))
    if train.ok and name == args.predict_table and predict_rows > 0:
        batch_csv = workspace / "score.csv"
        made, _ = measured("generate_batch", python("-m", "bench.tables", name, "--rows", str(predict_rows),
                                                    "--seed", str(seed + 1), "--no-target", "--out", str(batch_csv)),
                           "generate", quiet=False)
        if made.ok:
            measured("batch_predict", python("main.py", "predict", "--config-dir", str(config_dir), "--input",
                                             str(batch_csv), "--output", str(workspace / "scored.parquet")), "predict")
            result["predict_rows"] = predict_rows
            batch_csv.unlink(missing_ok=True)  # ~100 MB per million rows
    result["sizes_mb"] = sizes(workspace)
    return result


def sizes(workspace: Path) -> dict[str, float | None]:
    mlflow = [directory_mb(workspace / "mlflow.db"), directory_mb(workspace / "mlflow-artifacts")]
    return {"model_store": directory_mb(workspace / "models"), "artifacts": directory_mb(workspace / "artifacts"),
            "mlruns": round(sum(v for v in mlflow if v is not None), 2) if any(v is not None for v in mlflow)
            else None}


# --------------------------------------------------------------------------- compare (a child process)


def baseline_frames(train: Any, test: Any, target: str) -> tuple[Any, Any, dict[str, str]]:
    """The training and test features for the default HistGradientBoosting model (rules in the module docstring),
    and what was done to each column."""
    import numpy as np
    import pandas as pd

    x_train, x_test = train.drop(columns=[target]), test.drop(columns=[target])
    treatment: dict[str, str] = {}
    for column in list(x_train.columns):
        values = x_train[column]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        integral = pd.api.types.is_integer_dtype(values) or (
            numeric and values.notna().any() and bool(np.all(np.mod(values.dropna(), 1) == 0)))
        textual = not numeric and not pd.api.types.is_bool_dtype(values) and \
            not pd.api.types.is_datetime64_any_dtype(values)
        parsed = None if numeric or pd.api.types.is_bool_dtype(values) else _datetimes(values)
        if parsed is not None:  # before the id rule: a timestamp may well be unique per row
            for frame in (x_train, x_test):
                stamps = _datetimes(frame[column], force=True)
                for part in ("year", "month", "day", "dayofweek", "hour"):
                    frame[f"{column}.{part}"] = getattr(stamps.dt, "day_of_week" if part == "dayofweek" else part
                                                        ).astype(float)
            x_train, x_test = x_train.drop(columns=column), x_test.drop(columns=column)
            treatment[column] = "date-time: year, month, day, day of week, hour"
            continue
        if (integral or textual) and values.nunique() == len(values):
            treatment[column] = "dropped: one value per row (an id)"
            x_train, x_test = x_train.drop(columns=column), x_test.drop(columns=column)
            continue
        if pd.api.types.is_bool_dtype(values):
            x_train[column], x_test[column] = values.astype(float), x_test[column].astype(float)
            treatment[column] = "0/1"
            continue
        if numeric:
            x_train[column] = values.astype(float)
            x_test[column] = x_test[column].astype(float)
            treatment[column] = "number"
            continue
        text_train = values.astype(object).where(values.notna(), None)
        text_test = x_test[column].astype(object).where(x_test[column].notna(), None)
        levels = sorted({str(v) for v in text_train if v is not None})
        as_text_train = text_train.map(lambda v: None if v is None else str(v))
        as_text_test = text_test.map(lambda v: None if v is None else str(v))
        if len(levels) <= NATIVE_CATEGORIES:
            dtype = pd.CategoricalDtype(levels)
            x_train[column], x_test[column] = as_text_train.astype(dtype), as_text_test.astype(dtype)
            treatment[column] = f"native categorical ({len(levels)} values)"
        else:
            codes = {v: float(i) for i, v in enumerate(levels)}
            x_train[column] = as_text_train.map(codes).astype(float)
            x_test[column] = as_text_test.map(codes).astype(float)
            treatment[column] = f"ordinal codes as a number ({len(levels)} values)"
    return x_train, x_test, treatment


def _datetimes(values: Any, force: bool = False) -> Any:
    """`values` as datetime64 if they are datetimes, or text that parses as ISO 8601 throughout; else None."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    present = values.dropna()
    if present.empty:
        return None
    parsed = pd.to_datetime(values.astype(object).where(values.notna(), None), format="ISO8601", errors="coerce",
                            utc=True)
    if force:
        return parsed
    if not all(isinstance(v, str) for v in present.iloc[:1000]):
        return None
    return parsed if parsed.notna().sum() == len(present) else None


def metrics_of(task: str, y: Any, predicted: Any, probabilities: Any = None, classes: Any = None) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics

    if task == "regression":
        return {"rmse": float(math.sqrt(metrics.mean_squared_error(y, predicted))),
                "mae": float(metrics.mean_absolute_error(y, predicted)), "r2": float(metrics.r2_score(y, predicted))}
    scores = {"accuracy": float(metrics.accuracy_score(y, predicted))}
    if probabilities is not None:
        labels = list(classes)
        scores["log_loss"] = float(metrics.log_loss(y, probabilities, labels=labels))
        if len(labels) == 2:
            scores["roc_auc"] = float(metrics.roc_auc_score(y, probabilities[:, 1]))
            scores["brier"] = float(metrics.brier_score_loss(np.asarray(y) == labels[1], probabilities[:, 1]))
    return scores


def predicted_scores(task: str, scored: Any, y: Any) -> dict[str, float]:
    """Metrics from `main.py predict`'s output (prediction, probability_<label> columns) in the test split's order."""
    import numpy as np

    if len(scored) != len(y):
        raise BenchmarkError(f"predict returned {len(scored)} rows for {len(y)} test rows")
    if task == "regression":
        return metrics_of(task, y, scored["prediction"].to_numpy(float))
    columns = [c for c in scored.columns if c.startswith("probability_")]
    by_text = {str(v): v for v in np.unique(y)}
    labels = [c.removeprefix("probability_") for c in columns]
    classes = [by_text.get(label, label) for label in labels]
    predicted = scored["prediction"].map(lambda v: by_text.get(str(v), v)).to_numpy()
    probabilities = scored[columns].to_numpy(float) if columns else None
    return metrics_of(task, y, predicted, probabilities, classes)


def compare(args: argparse.Namespace) -> int:
    """The `compare` child: the champion's scores and a default HistGradientBoosting model's, on the run's split."""
    import pandas as pd
    import yaml

    report: dict[str, Any] = {"task": args.task, "metric": TOLERANCE[args.task][0]}
    try:
        train = pd.read_parquet(args.run_dir / "transform" / "train.parquet")
        test = pd.read_parquet(args.run_dir / "transform" / "test.parquet")
        report.update(train_rows=len(train), test_rows=len(test))
        config = yaml.safe_load((args.config_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        separator = (config.get("data_source") or {}).get("separator") or ","
        scratch = args.out.parent  # outside the artifacts, so their size is the pipeline's own
        scratch.mkdir(parents=True, exist_ok=True)
        test_csv, scored_path = scratch / "test-split.csv", scratch / "test-scored.parquet"
        test.to_csv(test_csv, sep=separator, index=False)
        step, stdout, stderr = run_child("predict_test_split", [sys.executable, "main.py", "predict", "--config-dir",
                                         str(args.config_dir), "--input", str(test_csv), "--output", str(scored_path)],
                                         dict(os.environ), scratch, CHILD_TIMEOUT_S)
        if not step.ok:
            step.stage, step.message = failure(stdout, stderr, step.returncode, "predict")
        report["predict_test_split"] = asdict(step)
        y_test = test[args.target]
        if step.ok:
            report["tool_predict"] = predicted_scores(args.task, pd.read_parquet(scored_path), y_test)
        evaluated = args.run_dir / "evaluate" / "result.json"
        if evaluated.exists():
            result = json.loads(evaluated.read_text(encoding="utf-8"))
            report["tool_evaluate"] = result.get("champion_metrics") or result.get("metrics") or {}
            report["champion_version"] = result.get("champion_version")
        report["tool_family"] = _family(args.config_dir)

        dropped = int(train[args.target].isna().sum() + test[args.target].isna().sum())
        train, test = train[train[args.target].notna()], test[test[args.target].notna()]
        x_train, x_test, treatment = baseline_frames(train, test, args.target)
        report.update(baseline_dropped_target_rows=dropped, baseline_columns=treatment)
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        model = (HistGradientBoostingRegressor if args.task == "regression" else HistGradientBoostingClassifier)(
            random_state=0)
        started = time.perf_counter()
        model.fit(x_train, train[args.target])
        report["baseline_fit_s"] = round(time.perf_counter() - started, 2)
        if args.task == "regression":
            report["baseline"] = metrics_of(args.task, test[args.target], model.predict(x_test))
        else:
            report["baseline"] = metrics_of(args.task, test[args.target], model.predict(x_test),
                                            model.predict_proba(x_test), model.classes_)
        report["baseline_process_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except Exception as exc:  # reported, not raised: the parent goes on with the next table
        report["error"] = f"{type(exc).__name__}: {exc}"
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if "error" not in report else 1


def _family(config_dir: Path) -> str | None:
    import yaml

    try:
        params = yaml.safe_load((config_dir / "params.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return (params.get("model") or {}).get("family")


# --------------------------------------------------------------------------- report


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The champion's metric against the default model's, and (flights) the resource targets."""
    comparison = result.get("comparison") or {}
    metric, kind, limit = TOLERANCE[result["task"]]
    tool_scores = comparison.get("tool_evaluate") or {}
    source = "evaluate"
    if metric not in tool_scores:
        tool_scores, source = comparison.get("tool_predict") or {}, "predict on the test split"
    tool, base = tool_scores.get(metric), (comparison.get("baseline") or {}).get(metric)
    out: dict[str, Any] = {"metric": metric, "tool": tool, "baseline": base, "tool_source": source if tool else None}
    if tool is not None and base is not None:
        out["vs"] = tool / base if kind == "ratio" else tool - base
        out["meets_metric"] = out["vs"] <= limit
    steps = result.get("steps", {})
    if result["table"] == "flights":
        train, store = steps.get("train") or {}, (result.get("sizes_mb") or {}).get("model_store")
        batch = steps.get("batch_predict") or {}
        if train.get("ok"):
            out["meets_train"] = train["wall_s"] <= FLIGHTS_TRAIN_S and train["peak_mb"] <= FLIGHTS_TRAIN_MB
        if store is not None:
            out["meets_store"] = store <= FLIGHTS_STORE_MB
        if batch.get("ok") and result.get("predict_rows", 0) >= DEFAULT_PREDICT_ROWS:
            out["meets_predict"] = batch["wall_s"] <= PREDICT_S and batch["peak_mb"] <= PREDICT_MB
    return out


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| table | rows | metric | tool | default HGB | tool vs HGB | metric target | train s | train peak MB "
             "| HGB fit s | model store MB | artifacts MB | mlruns MB |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    failures, notes = [], []
    for result in results:
        v, steps = verdict(result), result.get("steps", {})
        train = steps.get("train") or {}
        size = result.get("sizes_mb") or {}
        comparison = result.get("comparison") or {}
        kind, limit = TOLERANCE[result["task"]][1:]
        versus = "-" if "vs" not in v else (f"{v['vs']:.3f}x" if kind == "ratio" else f"{v['vs']:+.3f}")
        target = (f"<= {limit}x" if kind == "ratio" else f"<= +{limit}") + \
            ("" if "meets_metric" not in v else (" met" if v["meets_metric"] else " MISSED"))
        trained = _num(train.get("wall_s")) if train.get("ok") else "failed"
        lines.append(f"| {result['table']} | {result['rows']:,} | {v['metric']} | {_num(v['tool'], 4)} | "
                     f"{_num(v['baseline'], 4)} | {versus} | {target} | {trained} | {_num(train.get('peak_mb'), 0)} | "
                     f"{_num(comparison.get('baseline_fit_s'))} | {_num(size.get('model_store'))} | "
                     f"{_num(size.get('artifacts'))} | {_num(size.get('mlruns'))} |")
        for step in steps.values():
            if not step["ok"]:
                failures.append(f"- {result['table']}: `{step['name']}` failed in **{step['stage']}** after "
                                f"{step['wall_s']:.1f}s: {step['message']}")
        predict = comparison.get("predict_test_split") or {}
        if predict and not predict.get("ok"):
            failures.append(f"- {result['table']}: `main.py predict` on the test split failed in "
                            f"**{predict.get('stage')}**: {predict.get('message')}")
        if comparison.get("error"):
            failures.append(f"- {result['table']}: the comparison failed: {comparison['error']}")
        if v.get("tool_source") and v["tool_source"] != "evaluate":
            notes.append(f"- {result['table']}: the evaluate stage reports no {v['metric']}; the tool's is computed "
                         f"from `main.py predict` on the test split")
        if train.get("stage_seconds"):
            notes.append(f"- {result['table']} stages (s): " + ", ".join(f"{k} {s:.1f}" for k, s in
                                                                       train["stage_seconds"].items()))
        batch = steps.get("batch_predict")
        if batch and batch["ok"]:
            meets = "" if "meets_predict" not in v else (" (met)" if v["meets_predict"] else " (MISSED)")
            notes.append(f"- {result['table']}: batch predict of {result['predict_rows']:,} rows: "
                         f"{batch['wall_s']:.1f}s, peak {batch['peak_mb']:,.0f} MB; target <= {PREDICT_S:.0f}s and "
                         f"<= {PREDICT_MB:,.0f} MB for 1M rows{meets}")
        if "meets_train" in v or "meets_store" in v:
            notes.append(f"- {result['table']}: train target <= {FLIGHTS_TRAIN_S:.0f}s and <= {FLIGHTS_TRAIN_MB:,.0f} "
                         f"MB: {_met(v.get('meets_train'))}; model store <= {FLIGHTS_STORE_MB:.0f} MB: "
                         f"{_met(v.get('meets_store'))}")
    text = "\n".join(lines)
    if failures:
        text += "\n\nFailures:\n" + "\n".join(failures)
    if notes:
        text += "\n\nNotes:\n" + "\n".join(notes)
    return text


def _met(value: bool | None) -> str:
    return "not measured" if value is None else ("met" if value else "MISSED")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="bench.real_tables compare",
                                         description="(a child of the harness) champion vs default HGB on a split")
        parser.add_argument("--run-dir", type=Path, required=True, help="artifacts/<run id>")
        parser.add_argument("--config-dir", type=Path, required=True)
        parser.add_argument("--target", required=True)
        parser.add_argument("--task", choices=tuple(TOLERANCE), required=True)
        parser.add_argument("--out", type=Path, required=True,
                            help="the JSON report to write (its directory also gets the scratch files)")
        args = parser.parse_args(argv[1:])
        args.command = "compare"
        return args
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", choices=tuple(STAND_INS), default=list(STAND_INS),
                        help="which stand-ins (default: all)")
    parser.add_argument("--rows", type=int, help="rows of every table (default: each table's own size)")
    parser.add_argument("--predict-rows", type=int, default=DEFAULT_PREDICT_ROWS,
                        help="rows the champion of --predict-table batch-predicts (0: skip; default: 1000000)")
    parser.add_argument("--predict-table", choices=tuple(STAND_INS), default="flights",
                        help="the table whose champion batch-predicts --predict-rows rows made with another seed "
                             "(default: flights)")
    parser.add_argument("--seed", type=int, help="generator seed of every table (default: each table's own)")
    parser.add_argument("--timeout", type=float, default=CHILD_TIMEOUT_S,
                        help="seconds before a child is killed and reported as timed out (default: 3600)")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="before each measured child, wait up to this many seconds for a quiet machine "
                             "(0: don't wait; default: 30)")
    parser.add_argument("--work-dir", type=Path, help="where the workspaces go (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces (CSV, configs, outputs, logs)")
    parser.add_argument("--output", type=Path, help="JSON results (default: bench/results/real_tables-<time>.json)")
    parser.add_argument("--report", type=Path, metavar="JSON", help="print an earlier run's table and exit")
    args = parser.parse_args(argv)
    args.command = "run"
    if args.rows is not None and args.rows < 10:
        parser.error("--rows must be at least 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.command == "compare":
        return compare(args)
    if args.report:
        print(markdown(json.loads(args.report.read_text(encoding="utf-8"))["tables"]))
        return 0
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()
    root = Path(tempfile.mkdtemp(prefix="bench-real-tables-", dir=args.work_dir))
    log.info("workspaces under %s", root)
    results = []
    try:
        for name in args.tables:
            table = STAND_INS[name]
            rows = args.rows or table.rows
            seed = table.seed if args.seed is None else args.seed
            try:
                results.append(run_table(name, rows, seed, args.predict_rows, root / name, args))
            except Exception as exc:  # the harness's own failure on one table: say so, go on
                log.exception("%s: the harness failed", name)
                results.append({"table": name, "rows": rows, "seed": seed, "task": table.task, "target": table.target,
                                "steps": {"harness": asdict(Step("harness", False, stage="harness",
                                                                 message=f"{type(exc).__name__}: {exc}"))}})
    finally:
        if args.keep:
            log.info("workspaces kept: %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    machine["benchmark_process_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    payload = {"benchmark": "real_tables", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine, "settings": {"tables": args.tables, "rows": args.rows, "seed": args.seed,
                                                "predict_rows": args.predict_rows,
                                                "predict_table": args.predict_table, "timeout": args.timeout},
               "tables": [{**r, "verdict": verdict(r)} for r in results]}
    output = args.output or RESULTS_DIR / f"real_tables-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(markdown(payload["tables"]))
    print(f"\nJSON: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
