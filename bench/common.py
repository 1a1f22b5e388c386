"""What the benchmarks share: paths, errors, the children's environment, machine facts, idle checks.

Run a benchmark as a module from the project root, e.g. `.venv/bin/python -m bench.pipeline_scaling`
(the Makefile's `bench` and `bench-serving` targets do).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "include" / "config"
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
CONFIG_FILES = ("config.yaml", "schema.yaml", "params.yaml")
LIBRARIES = ("numpy", "pandas", "pyarrow", "scikit-learn", "great_expectations", "mlflow", "skops", "matplotlib")
OUTPUT_TAIL_LINES = 80
IDLE_THRESHOLD_CORES = 0.25  # other processes using less than this count as an idle machine


class BenchmarkError(RuntimeError):
    """A benchmark step failed; the message carries its output."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config_dir(source: Path, target: Path, family: str, hyperparameters: dict[str, Any]) -> Path:
    """Copy the three YAML files, switching params.yaml's model to `family` with `hyperparameters` (and tuning
    off: a search would replace that model)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILES:
        shutil.copyfile(source / name, target / name)
    params = yaml.safe_load((source / "params.yaml").read_text(encoding="utf-8"))
    params["model"]["family"] = family
    params["model"]["hyperparameters"] = dict(hyperparameters)
    if "tuning" in params:
        params["tuning"]["enabled"] = False
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return target


def stage_env(csv_path: Path | None, workspace: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: the source (None: the config's own), artifacts and MLflow store all
    inside `workspace`; `extra` (from --env) is applied last, e.g. OMP_NUM_THREADS to try a setting."""
    env = dict(os.environ)
    env.pop("MLOPS_CONFIG_DIR", None)  # --config-dir is passed explicitly
    if csv_path is not None:
        env["MLOPS_SOURCE_URI"] = str(csv_path)
    env.update({
        "MLOPS_ARTIFACTS_ROOT": str(workspace / "artifacts"),
        "MLOPS_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}",
        "MLOPS_ARTIFACT_LOCATION": str(workspace / "mlflow-artifacts"),
        "GIT_PYTHON_REFRESH": "quiet",
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent since boot (Linux /proc/stat); None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(timeout: float, threshold: float = IDLE_THRESHOLD_CORES, sample: float = 2.0) -> float | None:
    """Wait up to `timeout` s for other processes to use under `threshold` cores; return the last reading."""
    started = time.monotonic()
    announced = False
    while True:
        before = busy_cpu_seconds()
        if before is None:
            return None
        time.sleep(sample)
        cores = ((busy_cpu_seconds() or before) - before) / sample
        waited = time.monotonic() - started
        if cores < threshold:
            if announced:
                log.info("machine idle after %.0fs", waited)
            return cores
        if waited >= timeout:
            log.warning("machine still busy after %.0fs (%.2f cores used by other processes); measuring anyway",
                        waited, cores)
            return cores
        if not announced:
            log.info("machine busy (%.2f cores used by other processes); waiting up to %.0fs", cores, timeout)
            announced = True


def tail(path: Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def machine_facts() -> dict[str, Any]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0) if Path("/proc/meminfo").exists() else 0
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {
        "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu_model": cpu,
        "ram_gb": round(mem_kib / 2**20, 1), "python": platform.python_version(), "platform": platform.platform(),
        "libraries": versions, "git_sha": _git_sha(), "load_average": list(os.getloadavg()),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS",
                                                  "MKL_NUM_THREADS") if k in os.environ},
    }


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


