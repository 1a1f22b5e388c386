"""An MLflow tracking store and registry read through its tracking server, as the stacks' tests read it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from include.ml.artifacts import safe_run_id


class Registry:
    """The registered versions, a model's champion, and the MLflow runs an Airflow run started."""

    def __init__(self, url: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=url, registry_uri=url)

    def versions(self) -> dict[tuple[str, str], str]:
        """Every registered model version: (model name, version) -> the MLflow run that produced it."""
        return {(v.name, str(v.version)): v.run_id for v in self.client.search_model_versions()}

    def champion(self, name: str) -> str:
        return str(self.client.get_model_version_by_alias(name, "champion").version)

    def champion_or_none(self, name: str) -> str | None:
        """The champion's version; None while the model has none (or is not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.champion(name)
        except MlflowException:
            return None

    def pipeline_runs(self, run_id: str, stage: str = "train") -> list[Any]:
        """MLflow runs a stage (train: the model's run, which evaluate logs to too) of the pipeline run `run_id` (an
        Airflow run id) started, oldest first."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if not experiments:
            return []
        runs = self.client.search_runs(experiments, f"tags.pipeline_run_id = '{safe_run_id(run_id)}' and "
                                       f"tags.pipeline_stage = '{stage}'",
                                       order_by=["attributes.start_time ASC"])
        return list(runs)

    def model_location(self, name: str, version: str) -> str:
        return self.client.get_model_version_download_uri(name, version)


@contextmanager
def sqlite_store(root: Path, experiment: str) -> Iterator[str]:
    """MLflow's process-wide tracking and registry URIs on a SQLite store in `root`, with `experiment` created (its
    artifacts under root/art); yields the experiment id, and puts both URIs back afterwards."""
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{root}/mlflow.db")
    try:
        yield mlflow.create_experiment(experiment, artifact_location=(root / "art").as_uri())
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
