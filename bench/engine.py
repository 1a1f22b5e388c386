"""In-process predict per model family: the serving engine (ONNX Runtime) beside scikit-learn, same rows.

For each family of include/ml/models.py, as regressor and classifier, it fits the pipeline the way training does
(training.build_pipeline: the preprocessing + the family; the random forest with params.yaml's hyperparameters, the
default champion; the others with their defaults) on the configured data (the default: wine quality; the classifier
predicts `quality` as a class), converts it as export does (include.release.onnx.conversion.compile_predictor,
with the server's agreement check), and times, on the same validated columns, one row and 100 rows:

- the engine: `OnnxPredictor.predict(columns, numeric)` (what LoadedModel.predict calls when ONNX Runtime serves);
- scikit-learn: `Pipeline.predict` (+ `predict_proba` for a classifier) on the same columns as a DataFrame,
  with n_jobs=1 (LoadedModel.sklearn_predict, the fallback).

    .venv/bin/python -m bench.engine                 # ~1 minute on 2 cores
    .venv/bin/python -m bench.engine --calls 2000

Prints a markdown table (p50 µs and sklearn ÷ engine) and writes JSON to bench/results/. The machine's
load (other processes' CPU during the run) is in the output: on a shared box the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench.common import DEFAULT_CONFIG_DIR, PROJECT_ROOT, RESULTS_DIR, busy_cpu_seconds, machine_facts

log = logging.getLogger(__name__)
FAMILIES = ("random_forest", "hist_gradient_boosting", "elasticnet")
TASKS = ("regression", "classification")


def p50_us(call: Callable[[], Any], calls: int) -> float:
    for _ in range(max(calls // 20, 5)):
        call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def bench_family(family: str, task: str, config_dir: Path, calls: int) -> dict[str, Any]:
    import pandas as pd

    from include.ml.components.training import build_pipeline
    from include.ml.configuration import ConfigurationManager
    from include.ml.entities import TrainingConfig
    from include.ml.params_file import ModelConfig
    from include.release.onnx.conversion import compile_predictor
    from serving.contract import Contract
    from serving.inputs import validate
    from serving.model import _single_threaded

    config = ConfigurationManager(config_dir, env={}).config
    schema = config.schema
    frame = pd.read_csv(config.data_source.uri, sep=config.data_source.separator)
    x = frame[[c.name for c in schema.features]]
    y = frame[schema.target].astype(str) if task == "classification" else frame[schema.target]
    params = dict(config.model.hyperparameters) if family == config.model.family else {}
    model = ModelConfig(family=family, random_state=config.model.random_state, hyperparameters=params)
    pipeline = build_pipeline(TrainingConfig(schema, model, config.mlflow, {})).fit(x, y)
    _single_threaded(pipeline)
    stored = Contract.from_mlmodel({"metadata": {"feature_contract": schema.feature_contract()}})
    contract = Contract(task, stored.features)

    def sklearn_predict(columns: dict[str, Any]) -> tuple[Any, Any]:
        data = pd.DataFrame(columns, copy=False)
        return pipeline.predict(data), pipeline.predict_proba(data) if task == "classification" else None

    records = x.head(100).astype(object).where(x.head(100).notna(), None).to_dict("records")
    predictor, engine = compile_predictor(pipeline, contract, records[:5], sklearn_predict)
    result: dict[str, Any] = {"family": family, "task": task, "engine": engine.name, "reason": engine.reason}
    for rows in (1, 100):
        batch = validate(records[:rows], contract, max_rows=rows, out_of_range="flag")
        result[f"sklearn_{rows}_us"] = p50_us(lambda b=batch: sklearn_predict(b.columns), max(calls // 10, 30))
        result[f"engine_{rows}_us"] = p50_us(lambda b=batch: predictor.predict(b.columns, b.numeric), calls) \
            if predictor else None
    log.info("%s %s: %s", family, task, result)
    return result


def markdown(results: list[dict[str, Any]], other_cores: float | None) -> str:
    lines = ["| family | task | engine | 1 row: engine µs | 1 row: sklearn µs | sklearn ÷ engine "
             "| 100 rows: engine µs | 100 rows: sklearn µs |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        engine_1, engine_100 = r["engine_1_us"], r["engine_100_us"]
        ratio = f"{r['sklearn_1_us'] / engine_1:,.0f}×" if engine_1 else "—"
        lines.append(f"| {r['family']} | {r['task']} | {r['engine']}{'' if not r['reason'] else ': ' + r['reason']} "
                     f"| {engine_1 or 0:,.1f} | {r['sklearn_1_us']:,.0f} | {ratio} | {engine_100 or 0:,.1f} "
                     f"| {r['sklearn_100_us']:,.0f} |")
    if other_cores is not None:
        lines.append(f"\nOther processes used {other_cores:.2f} cores on average during the run.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--calls", type=int, default=1000, help="engine calls per figure (sklearn: a tenth)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as serving/gunicorn.conf.py sets for every worker
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    own, busy, started = time.process_time(), busy_cpu_seconds(), time.perf_counter()
    results = [bench_family(f, t, args.config_dir.resolve(), args.calls) for f in FAMILIES for t in TASKS]
    wall = time.perf_counter() - started
    other = None if busy is None else max(0.0, ((busy_cpu_seconds() or busy) - busy - (time.process_time() - own))
                                          / wall)
    report = {"benchmark": "engine", "machine": machine_facts(), "other_cores": other, "results": results}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"engine-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results, other))
    print(f"raw results: {out.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
