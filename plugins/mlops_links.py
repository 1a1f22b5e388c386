"""Airflow plugin: task links to the MLflow run, the GX Data Docs and the monitoring report of a pipeline run.

- "MLflow run" opens the run a `train`, `evaluate` or `monitor` task logged (its XCom `mlflow_run_url`).
- "Data Docs" opens the Great Expectations report of a `validate` task, served by the small
  FastAPI app below from <artifacts_root>/<run id>/validate/data_docs/ (only that folder).
- "Monitoring report" opens the drift report of ml_monitor's `monitor` task, served the same way from
  <artifacts_root>/<run id>/monitor/ (only that folder).

Links are read from XCom, so they appear once the task has pushed its result.

Both reports show sample values of the data, so the route asks what the rest of the api-server asks: an
Airflow login (the UI's `_token` cookie, or a Bearer token from POST /auth/token; 401 without), and read
access to the runs of every DAG that has a run with that id (the auth manager decides; 403 without). A path
that is not a plain file inside that run's folder (a NUL byte, `..`, an unknown run) is a 404.

The reports hold values from the data, and Great Expectations writes them into its HTML unescaped (a category
value `<img src=x onerror=...>` becomes an element). So every answer of these routes carries REPORT_HEADERS: the
CSP `sandbox` gives the page an opaque origin with no script (no cookies, no API calls as the viewer even if markup
gets in), `default-src 'none'` loads nothing from anywhere (the Data Docs' CDN styles and scripts included),
inline styles and data: images only; `nosniff` keeps a browser from reading a data file as HTML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response

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

        from include.ml.artifacts import safe_run_id

        return _served(f"data-docs/{safe_run_id(ti_key.run_id)}/index.html")


class MonitoringReportLink(BaseOperatorLink):
    name = "Monitoring report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if "monitor_report" not in _result(ti_key):
            return ""
        from include.ml.artifacts import safe_run_id

        return _served(f"monitoring/{safe_run_id(ti_key.run_id)}/report.html")


def _served(path: str) -> str:
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="http://127.0.0.1:8080").rstrip("/")
    return f"{base}{URL_PREFIX}/{path}"


app = FastAPI(title="MLOps pipeline artifacts")
REPORT_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
}


@app.middleware("http")
async def report_headers(request: Request, call_next: Any) -> Response:
    """REPORT_HEADERS on every answer, a refusal (401, 403, 404) included."""
    response = await call_next(request)
    response.headers.update(REPORT_HEADERS)
    return response


FOLDERS = {"data-docs": ("validate", "data_docs"), "monitoring": ("monitor",)}  # route -> folder of a run's artifacts


def _docs_file(run_id: str, path: str, route: str = "data-docs") -> Path | None:
    """The file `path` names in the run's folder of `route`; None unless it is a plain file inside that folder."""
    from include.ml.configuration import project_config

    if "\0" in path:
        return None
    try:
        root = project_config().artifacts_root.joinpath(run_id, *FOLDERS[route]).resolve()
        target = (root / path).resolve()
        return target if target.is_relative_to(root) and target.is_file() else None
    except (ValueError, OSError):  # a name the file system refuses
        return None


def _dags_with_run(run_id: str) -> list[str]:
    """The DAGs that have a run whose folder name is `run_id` (safe_run_id of its run id); [] for a bad name."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.ml.artifacts import safe_run_id

    try:
        if "\0" in run_id or safe_run_id(run_id) != run_id:  # only [A-Za-z0-9_.-]: nothing LIKE treats specially
            return []
    except ValueError:
        return []
    # safe_run_id turned each stretch of other characters into one "_": match loosely, then exactly.
    pattern = "%" + run_id.replace("_", "%") + "%"
    with create_session() as session:
        rows = session.execute(select(DagRun.dag_id, DagRun.run_id).where(DagRun.run_id.like(pattern))).all()
    return sorted({dag_id for dag_id, full_id in rows if safe_run_id(full_id) == run_id})


@app.get("/data-docs/{run_id}/{path:path}")
def data_docs(run_id: str, path: str, request: Request, user: GetUserDep) -> FileResponse:
    """One file of a pipeline run's Data Docs: 401 without a login, 403 without read access to the run's DAG."""
    return _run_file("data-docs", run_id, path, request, user)


@app.get("/monitoring/{run_id}/{path:path}")
def monitoring(run_id: str, path: str, request: Request, user: GetUserDep) -> FileResponse:
    """One file of an ml_monitor run's report folder, with the same checks as the Data Docs."""
    return _run_file("monitoring", run_id, path, request, user)


def _run_file(route: str, run_id: str, path: str, request: Request, user: Any) -> FileResponse:
    missing = HTTPException(status_code=404, detail=f"no {route} file {path!r} for run {run_id!r}")
    dag_ids = _dags_with_run(run_id)
    if not dag_ids:
        raise missing
    for dag_id in dag_ids:  # what the run's own pages in the UI need
        requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=dag_id)(request, user)
    target = _docs_file(run_id, path, route)
    if target is None:
        raise missing
    return FileResponse(target)


class MlopsLinksPlugin(AirflowPlugin):
    name = "mlops_links"
    global_operator_extra_links = [MlflowRunLink(), DataDocsLink(), MonitoringReportLink()]
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "MLOps pipeline artifacts"}]
