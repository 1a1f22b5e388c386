"""
### ml_pipeline: train, evaluate, register and deploy the model

One task per stage of `include/pipeline.py`:
**ingest → validate → transform → tune → train → evaluate → deploy → verify**. Each task calls
`run_<stage>(cm, run_id)` with this DAG run's id made path-safe, so a run writes
`<artifacts_root>/<run id>/<stage>/` exactly as `python main.py --run-id <run id>` would,
and any task can be cleared and re-run alone. Tasks pass each other only small
summaries (paths, counts, MLflow ids, the model version, metrics) through XCom.

**Params** (*Trigger DAG* → run configuration)

* `source`: data source for this run (local path, `http(s)://` or `s3://` URI of a CSV or zip);
  empty = `data_source.uri` from the config dir's `config.yaml` ($MLOPS_CONFIG_DIR, default `include/config`).
* `model_family`: train this family instead of `model.family` from `params.yaml` (with the estimator's
  default hyperparameters: the YAML's belong to the configured family); with tuning on, tune within this
  family only; empty = `params.yaml`.
* `tune`: run the hyperparameter search (on) or train `params.yaml`'s model as written (off);
  empty = `tuning.enabled` from `params.yaml` (off when it has no `tuning:` section).
* `tune_trials`: the search's trial budget for this run; empty = `tuning.n_trials` from `params.yaml`.
* `tune_workers`: how many `tune_worker` tasks share the search for this run (at most the DAG's bound, below);
  empty = `tuning.workers` from `params.yaml`.
* `force_promote`: make the new model the champion even if the champion/challenger gate says no.

**Tune** (when tuning is on; otherwise *skipped*, and so are its workers and collect) searches the model
families and their hyperparameters with Optuna, scoring each trial by k-fold cross-validation on the training
split only (the test split is first read by evaluate), each trial a nested MLflow run under the tune run. It
runs as three steps sharing one Optuna study in `tuning.storage` (default: a SQLite file in the run's tune
folder, which only works when every worker sees that folder; the production topology uses a PostgreSQL
database of its own, `MLOPS_TUNING_STORAGE`): **tune** opens the study and the parent MLflow run,
**tune_worker** (one mapped task per worker, at most `max_active_tis_per_dagrun` of them at once: the larger
of `tuning.workers` and the form's maximum for `tune_workers`) runs trials until the study-wide trial budget or
the shared deadline is spent, each trial's nested run tagged `tune_worker` and `tune_host`, and
**tune_collect** picks the best trial. **train** then fits the best configuration on the whole training split.
With one worker, the same data and seed give the same best trial; with more, each worker's sampler is seeded
`seed + index`, and the search is not bit-identical across worker counts.

**Deploy** runs only when evaluation promoted a new champion (otherwise it is *skipped*, and its log says
why): it puts the champion on `deployment.target` from `config.yaml` — `local`, the prediction server of
`make up` on 127.0.0.1:8000, or `ec2`, the fleet refreshed one batch at a time through S3 and SSM, rolled
back if any server fails. **Verify** then sends the model's input example to every server and checks the
answers equal the registered model's own predictions.

**Progressive releases**: with `release.strategy: progressive` in `params.yaml`, the version the gate passes
becomes the release *candidate* instead of the champion; deploy and verify are skipped, and **signal_candidate**
emits the `<model>-candidate` Asset event that starts `ml_release` (shadow, canary steps, promote, each step
gated on live evidence). Otherwise signal_candidate is *skipped*.

**Failures**: a data-validation failure, a configuration error or a rolled-back deploy fails its task
at once (retrying cannot fix the data; a person should look at a failed rollout); anything else is
retried with exponential backoff.

**Schedule**: `airflow.schedule` (nightly), the `<model>-drift` Asset event of `ml_monitor`, or both, as
`airflow.retrain_on` of `config.yaml` says (default: the schedule only).

**Links and lineage**: validate has a *Data Docs* button, tune_collect, train and evaluate an *MLflow run* button
(`plugins/mlops_links.py`); the Assets view shows source → snapshot → registered model.

Parsing this file imports no ML library: they load inside the tasks.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from airflow.sdk.definitions.retry_policy import RetryAction, RetryRule

from dags.stage_tasks import candidate_asset, default_args, drift_asset
from include.ml.configuration import project_config, tuning_workers
from include.ml.models import FAMILIES  # light: names only, estimators are imported when built

PROJECT = project_config()  # config.yaml only, validated: a bad edit shows as this file's import error
MODEL_NAME = PROJECT.mlflow.registered_model_name
# Lineage shown in the UI: the configured source -> the run's snapshot -> the registered model.
SOURCE = Asset(name=f"{MODEL_NAME}-source", uri=PROJECT.data_source.uri if "://" in PROJECT.data_source.uri
               else Path(PROJECT.data_source.uri).as_uri())
SNAPSHOT = Asset(name=f"{MODEL_NAME}-snapshot", uri=f"x-mlops://snapshots/{MODEL_NAME}")
MODEL = Asset(name=f"{MODEL_NAME}-registered-model", uri=f"x-mlops://models/{MODEL_NAME}")
CANDIDATE = candidate_asset(MODEL_NAME)  # release.strategy progressive: starts ml_release
TUNE_WORKERS_FORM_MAX = 8  # the most tune_worker tasks a trigger form may ask for
# params.yaml's tuning.workers (validated, light), or the form's maximum if larger: the mapped tasks of a run
TUNE_WORKERS_AT_ONCE = max(tuning_workers(), TUNE_WORKERS_FORM_MAX)


def _schedule(retrain_on: str, cron: str | None) -> Any:
    """airflow.retrain_on: the nightly cron, ml_monitor's drift Asset event, or whichever comes first."""
    if retrain_on == "schedule":
        return cron
    if retrain_on == "drift" or cron is None:
        return [drift_asset(MODEL_NAME)]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=[drift_asset(MODEL_NAME)])


@dag(
    dag_id="ml_pipeline",
    description="ingest -> validate -> transform -> tune -> tune_worker x N -> tune_collect -> train -> evaluate "
                "-> deploy -> verify (include/pipeline.py)",
    doc_md=__doc__,
    schedule=_schedule(PROJECT.airflow.retrain_on, PROJECT.airflow.schedule),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["ml", "training", MODEL_NAME],
    default_args=default_args(timedelta(minutes=45), [
        RetryRule(exception=["include.ml.exceptions.DataValidationError", "include.ml.exceptions.ConfigError",
                             "include.ml.exceptions.SourceTooLargeError", "include.ml.exceptions.TuningError"],
                  action=RetryAction.FAIL, reason="bad data or configuration: retrying cannot fix it"),
        # The champion/challenger gate refused: the same models give the same answer on every try.
        RetryRule(exception=["include.ml.exceptions.ChampionGateError"],
                  action=RetryAction.FAIL, reason="the gate refused; force_promote overrides it"),
        # A failed rollout has already put every server back; a person should look before another try.
        RetryRule(exception=["include.ml.exceptions.DeploymentError"],
                  action=RetryAction.FAIL, reason="deploy failed and was rolled back"),
    ]),
    params={
        "source": Param(None, type=["null", "string"],
                        description="Data source URI for this run, within data_source.allowed_sources of config.yaml "
                                    "(by default only data_source.uri itself); empty = data_source.uri"),
        "model_family": Param(None, type=["null", "string"], enum=[None, *FAMILIES],
                              description="Model family for this run, with default hyperparameters; "
                                          "empty = model.family from params.yaml"),
        "tune": Param(None, type=["null", "boolean"],
                      description="Search hyperparameters before training (on) or train params.yaml's model (off); "
                                  "empty = tuning.enabled from params.yaml"),
        "tune_trials": Param(None, type=["null", "integer"], minimum=1,
                             description="Trials the search may run; empty = tuning.n_trials from params.yaml"),
        "tune_workers": Param(None, type=["null", "integer"], minimum=1, maximum=TUNE_WORKERS_FORM_MAX,
                              description="Workers (tune_worker tasks) sharing the search; empty = tuning.workers "
                                          "from params.yaml"),
        "force_promote": Param(False, type="boolean",
                               description="Promote the new model even if the champion/challenger gate says no"),
    },
)
def ml_pipeline() -> None:
    @task(inlets=[SOURCE], outlets=[SNAPSHOT])
    def ingest(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_ingest

        return task_result(run_ingest(*stage_config(run_id, params)))

    @task(inlets=[SNAPSHOT])
    def validate(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_validate

        return task_result(run_validate(*stage_config(run_id, params)))  # DataValidationError: failed at once

    @task
    def transform(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_transform

        return task_result(run_transform(*stage_config(run_id, params)))

    @task
    def tune(run_id: str | None = None, params: dict[str, Any] | None = None) -> list[int]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_tune_open

        # Skipped when tuning is off. Its XCom is what tune_worker is mapped over (Airflow maps only over a task's
        # whole return value); the study and the MLflow run are in the log, and in tune_collect's XCom.
        return task_result(run_tune_open(*stage_config(run_id, params)))["worker_indices"]

    @task(max_active_tis_per_dagrun=TUNE_WORKERS_AT_ONCE)
    def tune_worker(worker: int, run_id: str | None = None, params: dict[str, Any] | None = None,
                    ti: Any = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_tune_worker

        return task_result(run_tune_worker(*stage_config(run_id, params), worker, ti.hostname))

    @task
    def tune_collect(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_tune_collect

        return task_result(run_tune_collect(*stage_config(run_id, params)))

    @task(trigger_rule="none_failed")  # also after a skipped tune (tuning off)
    def train(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_train

        return task_result(run_train(*stage_config(run_id, params)))

    @task(outlets=[MODEL])
    def evaluate(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_evaluate

        return task_result(run_evaluate(*stage_config(run_id, params), force_promote=bool(params["force_promote"])))

    @task
    def deploy(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_deploy

        return task_result(run_deploy(*stage_config(run_id, params)))

    @task
    def verify(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_verify

        return task_result(run_verify(*stage_config(run_id, params)))

    @task(inlets=[MODEL], outlets=[CANDIDATE])
    def signal_candidate(evaluated: dict[str, Any], outlet_events: Any = None) -> dict[str, Any]:
        from dags.stage_tasks import task_result
        from include.pipeline import candidate_signal

        result = task_result(candidate_signal(evaluated))  # skipped, so no Asset event, unless a candidate was made
        outlet_events[CANDIDATE].extra = {"version": result["version"]}
        return result

    prepared = ingest() >> validate() >> transform()
    opened = tune()
    prepared >> opened
    trained = tune_worker.expand(worker=opened) >> tune_collect() >> train()
    evaluated = evaluate()
    trained >> evaluated >> deploy() >> verify()
    signal_candidate(evaluated)


ml_pipeline()
