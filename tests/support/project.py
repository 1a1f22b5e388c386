"""The project's own paths, pipeline outputs sent to a temp dir, and `python main.py` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.support.network import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "include" / "config"
WINE_CSV = REPO / "data" / "wine-quality" / "winequality-red.csv"


def outputs_env(root: Path) -> dict[str, str]:
    """MLOPS_* settings sending every output under `root`: artifacts, the MLflow store, the local model store
    (and a serving URL where nothing listens), so tests never touch the project's own."""
    return {"MLOPS_ARTIFACTS_ROOT": str(root / "artifacts"), "MLOPS_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            "MLOPS_ARTIFACT_LOCATION": str(root / "mlartifacts"), "MLOPS_MODEL_STORE": str(root / "models"),
            "MLOPS_SERVING_URL": f"http://127.0.0.1:{free_port()}",
            "MLOPS_SIGNING_KEY": str(root / "keys" / "bundle-signing.key"),
            "MLOPS_SIGNING_PUBLIC_KEY": str(root / "keys" / "bundle-signing.pub"),
            "MLOPS_CAPTURE_DIR": str(root / "capture")}


def run_main(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python main.py *args` from the repo root, with `env` on top of this process's environment."""
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# Outside tests/ml/test_explanations.py (which tests the leakage check at its defaults), evaluate explains a small
# sample: at the shipped budget (500 rows, 10 s) a forest's explanations were a third of every pipeline run's evaluate.
TEST_LEAKAGE_BUDGET = {"rows": 50, "seconds": 1.0}


def small_leakage_budget(config_dir: Path) -> None:
    """params.yaml's leakage budget cut to TEST_LEAKAGE_BUDGET in a copied config dir."""
    edit_yaml(config_dir / "params.yaml", lambda data: data.setdefault("leakage", {}).update(TEST_LEAKAGE_BUDGET))


def edit_yaml(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Load a YAML file, let `change` edit the data, write it back."""
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
