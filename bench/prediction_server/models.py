"""The models benched and their payloads: training and exporting a champion into a throw-away workspace, the
payload rows in the model's column order, and the in-process predict times (in a child, as a server worker).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    PROJECT_ROOT,
    BenchmarkError,
    stage_env,
    tail,
    write_config_dir,
)

log = logging.getLogger("bench.prediction_server")

# name -> (model family, hyperparameters); None keeps params.yaml as it is (the default champion).
MODELS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "rf": None,
    "hgb": ("hist_gradient_boosting", {"max_iter": 100}),
}
MODEL_LABELS = {"rf": "the default champion (params.yaml as shipped, tuning on)",
                "hgb": "HistGradientBoosting, 100 iterations"}
PAYLOAD_ROWS = (1, 100)


def workspace_env(workspace: Path) -> dict[str, str]:
    # Train and evaluate only: the deploy stage must not touch the project's model store or server.
    return stage_env(None, workspace, {"MLOPS_DEPLOY_TARGET": "none", "MLOPS_SERVING_URL": "http://127.0.0.1:9",
                                       "MLOPS_MODEL_STORE": str(workspace / "deploy-store"),
                                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})


def train_and_export(name: str, config_dir: Path, workspace: Path) -> Path:
    """Train the champion with main.py into `workspace` (its own MLflow store) and export it as a bundle."""
    spec = MODELS[name]
    model_config = workspace / "config"
    if spec is None:
        shutil.copytree(config_dir, model_config)
    else:
        write_config_dir(config_dir, model_config, spec[0], spec[1])
    env = workspace_env(workspace)
    logfile = workspace / "train.log"
    log.info("%s: training with main.py --config-dir %s (log: %s)", name, model_config, logfile)
    started = time.perf_counter()
    with logfile.open("wb") as out:
        done = subprocess.run([sys.executable, str(PROJECT_ROOT / "main.py"), "--config-dir", str(model_config)],
                              cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise BenchmarkError(f"training {name} failed; see {logfile}:\n{tail(logfile, 40)}")
    store = workspace / "store"
    export = subprocess.run([sys.executable, "main.py", "export", "--store", str(store), "--config-dir",
                             str(model_config), "--activate"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True)
    if export.returncode != 0:
        raise BenchmarkError(f"export of {name} failed:\n{export.stdout}\n{export.stderr}")
    from serving import pointer
    from serving import store as store_mod

    version = pointer.peek(store_mod.read_pointer(store)).version  # CURRENT is a signed pointer
    log.info("%s: trained and exported in %.0fs", name, time.perf_counter() - started)
    return store / version


def payload_rows(config_dir: Path, columns: list[str], n: int) -> list[list[float]]:
    """The first `n` rows of the configured data source, in the model's column order."""
    import pandas as pd

    from include.ml.configuration import ConfigurationManager

    source = ConfigurationManager(config_dir, env={}).config.data_source
    frame = pd.read_csv(source.uri, sep=source.separator, nrows=max(n, 1))
    return frame[columns].head(n).astype(float).values.tolist()


def model_columns(bundle: Path) -> list[str]:
    mlmodel = yaml.safe_load((bundle / "model" / "MLmodel").read_text())
    return [c["name"] for c in json.loads(mlmodel["signature"]["inputs"])]


def dataframe_split(columns: list[str], rows: list[list[float]]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def in_process_child(bundle: Path, body_files: dict[int, Path], calls: int, omp_threads: str | None
                     ) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    if omp_threads:
        env["OMP_NUM_THREADS"] = omp_threads
    spec = json.dumps({"bundle": str(bundle), "bodies": {str(n): str(f) for n, f in body_files.items()},
                       "calls": calls})
    done = subprocess.run([sys.executable, "-m", "bench.prediction_server", "--in-process-child", spec],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchmarkError(f"in-process timing failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["omp_num_threads"] = omp_threads or os.environ.get("OMP_NUM_THREADS") or "default"
    return result


def _timed(call: Any, repeats: int) -> dict[str, Any]:
    for _ in range(max(repeats // 20, 5)):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return {"calls": repeats, "p50_ms": statistics.median(times) * 1e3,
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3, "min_ms": times[0] * 1e3}


def in_process_predict(bundle: Path, bodies: dict[int, bytes], repeats: int) -> dict[str, Any]:
    """Predict times in this process, per payload size:

    - "ours": the server's model path (serving.model.load_bundle(b).predict on validated columns,
      served by the engine load_bundle chose: ONNX Runtime or sklearn, serving/engine.py);
    - "stock": the model's own predict as a user calls it in-process, the fastest of
      `mlflow.pyfunc.load_model(m).predict(df)` (what `mlflow models serve` calls), the scikit-learn
      Pipeline's `predict(df)` as trained, and the same with n_jobs=1 on every step.
    """
    import mlflow.pyfunc
    import pandas as pd

    from serving.body import mlflow_rows
    from serving.inputs import validate
    from serving.model import _single_threaded, load_bundle
    from serving.signing import load_public_keys

    model = load_bundle(bundle, load_public_keys(Path(os.environ["SERVING_PUBLIC_KEY"])))
    pyfunc = mlflow.pyfunc.load_model(str(bundle / "model"))
    pipeline = pyfunc.get_raw_model()
    single = copy.deepcopy(pipeline)
    _single_threaded(single)
    stock_calls = {"mlflow_pyfunc": pyfunc.predict, "sklearn_as_trained": pipeline.predict,
                   "sklearn_n_jobs_1": single.predict}
    out: dict[str, Any] = {}
    for rows, body in bodies.items():
        request = json.loads(body)
        records, _ = mlflow_rows(request)
        batch = validate(records, model.contract, max_rows=10_000)
        frame = pd.DataFrame(request["dataframe_split"]["data"], columns=request["dataframe_split"]["columns"])
        ours = _timed(lambda batch=batch: model.predict(batch.columns), repeats)
        ours["predictions"] = model.predict(batch.columns).values
        # The stock paths cost ~10x more per call; a third of the calls keeps the child under a minute.
        stock = {name: _timed(lambda call=call, frame=frame: call(frame), max(repeats // 3, 20))
                 for name, call in stock_calls.items()}
        fastest = min(stock, key=lambda name: stock[name]["p50_ms"])
        out[str(rows)] = {**ours, "stock": {**stock[fastest], "via": fastest, "all": stock}}
    out["engine"] = {"name": model.engine.name, "reason": model.engine.reason}
    return out
