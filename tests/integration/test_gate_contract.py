"""The gate never replaces a champion built for another contract (task, target, features) on its own.

`python main.py` runs in one temp MLflow store: the default wine model becomes champion, then a model of another
contract under the same registered name is refused (exit 1, aliases unchanged) until --force-promote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.support.project import CONFIG_DIR, REPO, WINE_CSV, edit_yaml, outputs_env, run_main

pytestmark = pytest.mark.integration

NAME = "wine-quality"


def registry_state(tracking_uri: str) -> tuple[list[str], dict[str, int]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    versions = sorted((str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")), key=int)
    return versions, client.get_registered_model(NAME).aliases


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default wine config run once: champion v1. Deployment is off: the gate is what is under test."""
    root = tmp_path_factory.mktemp("gate")
    env = {**outputs_env(root), "MLOPS_DEPLOY_TARGET": "none"}
    done = run_main("--run-id", "wine", env=env)
    assert done.returncode == 0, done.stderr
    assert "gate: PROMOTED - no champion yet" in done.stdout
    return {"root": root, "env": env}


def without_alcohol(tmp_path: Path) -> Path:
    """A copy of include/config whose schema and data lack the `alcohol` feature: another contract."""
    config_dir = tmp_path / "no-alcohol"
    shutil.copytree(CONFIG_DIR, config_dir)
    data = tmp_path / "wine-without-alcohol.csv"
    pd.read_csv(WINE_CSV, sep=";").drop(columns=["alcohol"]).to_csv(data, sep=";", index=False)
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"].pop("alcohol"))
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(uri=str(data)))
    return config_dir


def test_a_dropped_feature_is_refused_until_forced(store: dict, tmp_path: Path) -> None:
    env, tracking = store["env"], store["env"]["MLOPS_TRACKING_URI"]
    config_dir = without_alcohol(tmp_path)
    before = registry_state(tracking)[1]

    refused = run_main("--config-dir", str(config_dir), "--run-id", "refused", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    versions, aliases = registry_state(tracking)
    refused_version = versions[-1]
    champion = before["champion"]
    assert (f"pipeline failed in stage evaluate: {NAME} v{refused_version} was not promoted over an incompatible "
            f"champion v{champion}: features the challenger lacks: alcohol. The champion alias stays on "
            f"v{champion}; rerun with --force-promote") in refused.stderr
    assert aliases == before  # the champion alias did not move
    assert not (store["root"] / "artifacts" / "refused" / "evaluate" / "result.json").exists()

    forced = run_main("--config-dir", str(config_dir), "--run-id", "forced", "--force-promote", env=env)
    assert forced.returncode == 0, forced.stderr
    reason = f"forced promotion over an incompatible champion v{champion}: features the challenger lacks: alcohol"
    assert f"gate: PROMOTED - {reason}" in forced.stdout
    assert reason in forced.stderr  # the log says why, too
    versions, aliases = registry_state(tracking)
    assert aliases == {"champion": int(versions[-1]), "previous_champion": champion}


def test_another_task_and_target_under_the_same_name_is_refused(store: dict, tmp_path: Path) -> None:
    """examples/penguins (classification of species) pointed at the wine model's registered name."""
    env, tracking = store["env"], store["env"]["MLOPS_TRACKING_URI"]
    config_dir = tmp_path / "penguins"
    shutil.copytree(REPO / "examples" / "penguins", config_dir)
    edit_yaml(config_dir / "config.yaml", lambda d: d["mlflow"].update(registered_model_name=NAME))
    before = registry_state(tracking)[1]

    refused = run_main("--config-dir", str(config_dir), "--run-id", "penguins", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "was not promoted over an incompatible champion" in refused.stderr
    assert "task 'regression' (champion) vs 'classification' (challenger)" in refused.stderr
    assert "target 'quality' (champion) vs 'species' (challenger)" in refused.stderr
    assert "features new in the challenger: bill_depth_mm, bill_length_mm" in refused.stderr
    assert registry_state(tracking)[1] == before
