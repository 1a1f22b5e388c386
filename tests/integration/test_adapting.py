"""Adapting the project to a dataset with the documented commands alone: draft, train, serve.

Each test drives `python main.py` in child processes, as a user would: `init` drafts a config dir from a data
file, `main.py --config-dir D` trains it, and `main.py serve --config-dir D` serves its champion; the
prediction server must then answer /invocations as that model, by name and version.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.frames import flights_like
from tests.support.network import free_port
from tests.support.project import CONFIG_DIR, REPO, WINE_CSV, edit_yaml, outputs_env, run_main, small_leakage_budget

pytestmark = pytest.mark.integration

PENGUINS_CSV = REPO / "examples" / "penguins" / "penguins.csv"
EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if (p / "config.yaml").is_file())


@contextmanager
def serving(config_dir: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """`python main.py serve --config-dir D` in the foreground of a child process group, until the block ends."""
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "main.py", "serve", "--config-dir", str(config_dir),
                                   "--bind", f"127.0.0.1:{port}"], cwd=REPO, env={**os.environ, **env},
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"main.py serve exited with {server.returncode}:\n{log.read_text()}"
            try:
                urllib.request.urlopen(f"{url}/ready", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"main.py serve not ready in 120 s:\n{log.read_text()}"
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def invoke(url: str, rows: list[dict[str, Any]]) -> tuple[list[Any], str, str]:
    """POST /invocations; the predictions, and the model name and version the server says answered."""
    request = urllib.request.Request(f"{url}/invocations", json.dumps({"dataframe_records": rows}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"], response.headers["X-Model-Name"], \
            response.headers["X-Model-Version"]


def feature_rows(data: Path, separator: str, target: str, count: int = 5) -> list[dict[str, Any]]:
    """The first complete rows of a data file, without the target, typed as JSON numbers where they are."""
    def typed(value: str) -> Any:
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number

    with data.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter=separator) if all(v not in ("", "NA") for v in r.values())]
    return [{k: typed(v) for k, v in row.items() if k != target} for row in rows[:count]]


def train_then_serve(config_dir: Path, env: dict[str, str], log: Path, rows: list[dict[str, Any]]) -> None:
    """Train with the config dir, then serve it: the server answers every row as the new champion."""
    trained = run_main("--config-dir", str(config_dir), env=env)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "gate: PROMOTED - no champion yet" in trained.stdout
    name = yaml.safe_load((config_dir / "config.yaml").read_text())["mlflow"]["registered_model_name"]
    with serving(config_dir, env, log) as url:
        predictions, served_name, served_version = invoke(url, rows)
    assert (served_name, served_version) == (name, "1")
    assert len(predictions) == len(rows)


def test_a_config_without_airflow_and_ec2_sections_runs(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name in ("schema.yaml", "params.yaml"):
        (config_dir / name).write_bytes((CONFIG_DIR / name).read_bytes())
    config = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    del config["airflow"], config["deployment"]["ec2"]
    config["deployment"]["target"] = "none"
    (config_dir / "config.yaml").write_text(yaml.safe_dump(config))
    # What is under test is config.yaml's optional sections: no search, a small leakage budget.
    edit_yaml(config_dir / "params.yaml", lambda data: data["tuning"].update(enabled=False))
    small_leakage_budget(config_dir)
    done = run_main("--config-dir", str(config_dir), env=outputs_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "deploy: not deployed: deployment.target is none" in done.stdout
    assert "verify: not verified: this run deployed nothing" in done.stdout


@pytest.mark.parametrize("data, target, separator", [(WINE_CSV, "quality", ";"), (PENGUINS_CSV, "species", ",")],
                         ids=["wine", "penguins-categorical-and-missing"])
def test_init_drafts_a_config_dir_that_trains_and_serves_unedited(data: Path, target: str, separator: str,
                                                                 tmp_path: Path) -> None:
    config_dir = tmp_path / "drafted"
    drafted = run_main("init", "--data", str(data), "--target", target, "--out", str(config_dir))
    assert drafted.returncode == 0, drafted.stderr
    assert "# guessed:" in (config_dir / "schema.yaml").read_text()
    train_then_serve(config_dir, outputs_env(tmp_path), tmp_path / "serve.log", feature_rows(data, separator, target))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_trains_and_serves_with_the_documented_commands(example: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((example / "config.yaml").read_text())
    source = config["data_source"]
    schema = yaml.safe_load((example / "schema.yaml").read_text())
    rows = feature_rows(REPO / source["uri"], source.get("separator", ","), schema["target"])
    train_then_serve(example, outputs_env(tmp_path), tmp_path / "serve.log", rows)


def test_init_drafts_a_flights_like_table_that_trains_unedited(tmp_path: Path) -> None:
    """Above 20,000 rows with a target: hist_gradient_boosting and tuning on it alone; rows without a target,
    a constant year, a timestamp string, an open-set tail number and airport code, clock fields."""
    data = tmp_path / "flights.csv"
    flights_like(25_000).to_csv(data, index=False)
    config_dir = tmp_path / "drafted"
    drafted = run_main("init", "--data", str(data), "--target", "arr_delay", "--out", str(config_dir))
    assert drafted.returncode == 0, drafted.stderr
    for title in ("ignored (role: ignore, never features) (1):", "datetimes (1):", "categories (4):"):
        assert f"\n{title}\n" in drafted.stdout, drafted.stdout
    params = yaml.safe_load((config_dir / "params.yaml").read_text())
    assert params["model"]["family"] == "hist_gradient_boosting" and params["tuning"]["enabled"] is True
    trained = run_main("--config-dir", str(config_dir), env=outputs_env(tmp_path) | {"MLOPS_DEPLOY_TARGET": "none"})
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "gate: PROMOTED - no champion yet" in trained.stdout
    assert re.search(r"\ndata: .* \d+ rows without a target dropped", trained.stdout), trained.stdout[-3000:]
