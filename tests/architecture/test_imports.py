"""The dependency rule of docs/architecture.md holds, and the check would notice if it stopped holding.

`lint-imports` (import-linter, configured in .importlinter) runs in `make test`; here it runs on the real tree
and on copies of it with one deliberate violation each, which it must report as a broken contract.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("include", "serving", "dags", "plugins", "scripts")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.integration  # runs lint-imports in a child process


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The analysed packages and the contracts, copied where a test may break them."""
    root = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", root)
    return root


def test_the_tree_keeps_every_contract() -> None:
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, added, contract", [
    # A cycle hidden inside a function, as the old serving/api.py <-> serving/app.py one was.
    ("serving/store.py", "def _cycle():\n    from serving import model\n", "No import cycle"),
    ("serving/contract.py", "from include.ml import artifacts\n", "serving imports nothing from the pipeline side"),
    ("serving/batching.py", "import mlflow\n", "serving imports nothing from the pipeline side"),
    ("serving/engine.py", "def _convert():\n    from skl2onnx import convert_sklearn\n", "serving never converts"),
    ("include/ml/registry.py", "def _upward():\n    from include import pipeline\n", "Dependencies point one way"),
    ("include/ml/artifacts.py", "from serving import store\n", "only include.release imports"),
    ("include/ml/tracking.py", "import airflow\n", "The pipeline is plain Python"),
], ids=["cycle-in-a-function", "serving-imports-pipeline", "serving-imports-mlflow", "serving-converts",
         "ml-imports-pipeline",
        "ml-imports-serving", "pipeline-imports-airflow"])
def test_a_deliberate_violation_breaks_its_contract(tree: Path, module: str, added: str, contract: str) -> None:
    assert lint(tree).returncode == 0  # the copy itself is clean
    with (tree / module).open("a") as fh:
        fh.write("\n\n" + added)
    done = lint(tree)
    assert done.returncode != 0, done.stdout
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout


def test_main_py_imports_only_the_runners_and_the_ml_core() -> None:
    """main.py is a module, which import-linter does not analyse: its imports are checked here."""
    imported = set()
    for node in ast.walk(ast.parse((REPO / "main.py").read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    ours = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names | {"__future__"}}
    runners = ("include.ml.", "include.pipeline", "include.batch_runs")
    assert ours and all(name.startswith(runners) for name in ours), ours
