"""The servers compared: `mlflow models serve`, MLServer (its own virtualenv) and ours (gunicorn), as commands
and environments on one bundle, and how long each takes to answer ready.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    PROJECT_ROOT,
    BenchmarkError,
    free_port,
    tail,
)
from bench.prediction_server.load import http

log = logging.getLogger("bench.prediction_server")

VENV_BIN = Path(sys.executable).parent
MLSERVER_VENV = PROJECT_ROOT / "bench" / ".mlserver-venv"
MLSERVER_REQUIREMENTS = PROJECT_ROOT / "bench" / "mlserver-requirements.txt"


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    kind: str  # "mlflow" | "mlserver" | "ours"
    workers: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ready_path(self) -> str:
        return {"mlflow": "/ping", "mlserver": "/v2/models/model/ready"}.get(self.kind, "/ready")

    @property
    def predict_path(self) -> str:
        return "/v2/models/model/infer" if self.kind == "mlserver" else "/invocations"


def server_specs(workers: int, extra_env: list[str] | None = None) -> list[ServerSpec]:
    extra = dict(item.split("=", 1) for item in extra_env or [])
    return [
        ServerSpec("mlflow_default", "`mlflow models serve` (defaults: 1 worker)", "mlflow", 1),
        ServerSpec("mlflow_equal", f"`mlflow models serve -w {workers}`", "mlflow", workers),
        ServerSpec("mlserver", f"MLServer 1.7 sklearn runtime, adaptive batching, {workers} parallel workers",
                   "mlserver", workers),
        ServerSpec("ours", f"ours, {workers} workers, micro-batching on (defaults)", "ours", workers, extra),
        ServerSpec("ours_nobatch", f"ours, {workers} workers, SERVING_BATCHING=0", "ours", workers,
                   {**extra, "SERVING_BATCHING": "0"}),
    ]


def mlserver_venv() -> Path:
    """bench/.mlserver-venv from bench/mlserver-requirements.txt, made on first use (MLServer's own pins must not
    meet the project's virtualenv)."""
    python = MLSERVER_VENV / "bin" / "python"
    stamp = MLSERVER_VENV / "requirements.txt"
    if not (python.exists() and stamp.exists() and stamp.read_text() == MLSERVER_REQUIREMENTS.read_text()):
        log.info("building %s from %s (a few minutes, once)", MLSERVER_VENV, MLSERVER_REQUIREMENTS)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(MLSERVER_REQUIREMENTS)], check=True)
        shutil.copyfile(MLSERVER_REQUIREMENTS, stamp)
    return MLSERVER_VENV / "bin" / "mlserver"


def mlserver_model_dir(bundle: Path, port: int, workers: int, workdir: Path) -> Path:
    """The bundle's pipeline as model.joblib (what the sklearn runtime loads), adaptive batching on, `workers`
    parallel inference workers (0: in the server's own process)."""
    import joblib
    import mlflow.sklearn

    directory = workdir / f"mlserver-{port}"
    (directory / "model").mkdir(parents=True, exist_ok=True)
    joblib.dump(mlflow.sklearn.load_model(str(bundle / "model")), directory / "model" / "model.joblib")
    (directory / "model" / "model-settings.json").write_text(json.dumps({
        "name": "model", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}, "max_batch_size": 32, "max_batch_time": 0.005}))
    (directory / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": workers}))
    return directory


def v2_request(columns: list[str], rows: list[list[float]]) -> bytes:
    """The same rows in the V2 inference protocol, decoded by MLServer as a DataFrame (content type pd)."""
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": [
        {"name": c, "datatype": "FP64", "shape": [len(rows)], "data": [r[i] for r in rows]}
        for i, c in enumerate(columns)]}).encode()


def server_command(spec: ServerSpec, bundle: Path, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if spec.kind == "mlserver":
        return [str(mlserver_venv()), "start", str(mlserver_model_dir(bundle, port, spec.workers, workdir))], \
            {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow execs `uvicorn` from PATH
    if spec.kind == "mlflow":
        cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(bundle / "model"), "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
        if spec.workers != 1:
            cmd += ["-w", str(spec.workers)]
        return cmd, env
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({"SERVING_MODEL_STORE": str(bundle.parent), "SERVING_BIND": f"127.0.0.1:{port}",
                "SERVING_WORKERS": str(spec.workers), "PYTHONPATH": str(PROJECT_ROOT),
                "PROMETHEUS_MULTIPROC_DIR": str(Path(tempfile.mkdtemp(prefix="metrics-", dir=workdir))), **spec.env})
    return [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "serving" / "gunicorn.conf.py")], env


def wait_ready(proc: subprocess.Popen[bytes], url: str, logfile: Path, timeout: float = 180.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise BenchmarkError(f"server exited with {proc.returncode}:\n{tail(logfile, 40)}")
        try:
            status, _ = http("GET", url, timeout=2.0)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.25)
    raise BenchmarkError(f"server not ready after {timeout:.0f}s:\n{tail(logfile, 40)}")
