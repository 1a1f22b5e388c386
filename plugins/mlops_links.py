"""Airflow plugin: task links to the MLflow run and to the GX Data Docs of a pipeline run.

- "MLflow run" opens the run a `train` or `evaluate` task logged (its XCom `mlflow_run_url`).
- "Data Docs" opens the Great Expectations report of a `validate` task, served by the small
  FastAPI app below from <artifacts_root>/<run id>/validate/data_docs/ (only that folder).

Links are read from XCom, so they appear once the task has pushed its result.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

URL_PREFIX = "/mlops"


def _result(ti_key: Any) -> dict[str, Any]:
    """The task's return value. Links resolve in the api-server, so read XCom from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(XComModel.get_many(
            key="return_value", run_id=ti_key.run_id, dag_ids=ti_key.dag_id, task_ids=ti_key.task_id,
            map_indexes=ti_key.map_index)).scalars().first()
        value = XComModel.deserialize_value(row) if row is not None else None
    return value if isinstance(value, dict) else {}


class MlflowRunLink(BaseOperatorLink):
    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _result(ti_key).get("mlflow_run_url", "")


class DataDocsLink(BaseOperatorLink):
    name = "Data Docs"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if "data_docs" not in _result(ti_key):
            return ""
        from airflow.configuration import conf

        from include.ml.artifacts import safe_run_id

        base = conf.get("api", "base_url", fallback="http://127.0.0.1:8080").rstrip("/")
        return f"{base}{URL_PREFIX}/data-docs/{safe_run_id(ti_key.run_id)}/index.html"


app = FastAPI(title="MLOps pipeline artifacts")


@app.get("/data-docs/{run_id}/{path:path}")
def data_docs(run_id: str, path: str) -> FileResponse:
    from include.ml.artifacts import safe_run_id
    from include.ml.configuration import project_config

    try:
        valid_run_id = safe_run_id(run_id) == run_id
    except ValueError:
        valid_run_id = False
    root = (project_config().artifacts_root / run_id / "validate" / "data_docs").resolve()
    target = (root / path).resolve()
    if not valid_run_id or not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(status_code=404, detail=f"no Data Docs file {path!r} for run {run_id!r}")
    return FileResponse(target)


class MlopsLinksPlugin(AirflowPlugin):
    name = "mlops_links"
    global_operator_extra_links = [MlflowRunLink(), DataDocsLink()]
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "MLOps pipeline artifacts"}]
