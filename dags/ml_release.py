"""
### ml_release: a candidate judged on live traffic, step by step, then promoted or aborted

Starts when `ml_pipeline` made a release candidate (`release.strategy: progressive` in `params.yaml`: its
**signal_candidate** task emits the `<model>-candidate` Asset event), or by hand with **version** set to the
registered version to release (empty: the registry's `candidate` alias).

**begin** checks the version against the champion and opens the release's MLflow run `release-<version>-<time>`.
Then, for each step of `release:` (shadow, then the canary steps, e.g. 10 % and 50 %): **<step>** puts the
candidate beside the champion on every server through the signed pointer (shadow: it scores a share of the
requests off the request path; canary: it answers that share, sticky by client key), and **bake_<step>** watches
it for `bake_seconds`, looking every `poll_seconds` at every server's `/metrics` since the step began (candidate vs
champion error rate and p99 latency, their agreement) and at the labelled pairs since the release began (the
promotion metric's always-valid sequential test): a progress line per look in its log. Any alarm fails the bake at
once with the reason and its figures; **abort** (trigger rule *one_failed*) then puts the champion back on 100 % of
the traffic, and the run fails. With `release.approval: true` a person approves in Airflow (**approve**, a
human-in-the-loop task) before **promote** makes the candidate the champion at 100 %, and **confirm** checks every
server answers with it alone (after an abort it is *upstream_failed*, so the run fails). Every decision goes to the
MLflow run and into the candidate's model card as live evidence (`card/live_evidence.md`). docs/airflow.md#ml_release

The steps and the approval are read from `params.yaml` when this file is parsed. Parsing imports no ML library.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, chain, dag, task
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from dags.stage_tasks import candidate_asset
from include.ml.configuration import project_config, release_plan
from include.ml.release_settings import ReleaseStep

PROJECT = project_config()
MODEL_NAME = PROJECT.mlflow.registered_model_name
PLAN = release_plan()  # params.yaml release: only, validated: a bad edit shows as this file's import error
CANDIDATE = candidate_asset(MODEL_NAME)


@dag(
    dag_id="ml_release",
    description="shadow -> canary steps -> [approval] -> promote, each step gated on live evidence; any alarm aborts",
    doc_md=__doc__,
    schedule=[CANDIDATE],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "release", MODEL_NAME],
    default_args={
        "owner": "mlops",
        "retries": 1,
        "retry_delay": timedelta(seconds=30),
        "retry_policy": ExceptionRetryPolicy(rules=[
            RetryRule(exception=["include.release.steps.ReleaseAlarm", "include.ml.exceptions.ConfigError",
                                 "include.ml.exceptions.DeploymentError"],
                      action=RetryAction.FAIL, reason="the evidence refused the candidate, or a rollout failed and "
                                                      "was undone: retrying cannot fix it; abort runs"),
        ]),
    },
    params={
        "version": Param(None, type=["null", "string"], pattern=r"^[0-9]*$",
                         description="Registered version to release; empty = the candidate alias (or the version "
                                     "the candidate Asset event names)"),
    },
)
def ml_release() -> None:
    @task
    def begin(run_id: str | None = None, params: dict[str, Any] | None = None,
              triggering_asset_events: Any = None) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config, task_result
        from include.release import steps

        events = list((triggering_asset_events or {}).get(CANDIDATE, []))
        version = params["version"] or (events[-1].extra.get("version") if events else None)
        return task_result(steps.begin(pipeline_config().config, run_id, version))

    def start(step: ReleaseStep) -> Any:
        @task(task_id=step.name)
        def start_step(release: dict[str, Any]) -> dict[str, Any]:
            from dags.stage_tasks import pipeline_config, task_result
            from include.release import steps

            return task_result(steps.start_step(pipeline_config().config, steps.Release.from_xcom(release), step))

        return start_step

    def bake(step: ReleaseStep) -> Any:
        @task(task_id=f"bake_{step.name}", execution_timeout=timedelta(seconds=step.bake_seconds + 600))
        def bake_step(release: dict[str, Any]) -> dict[str, Any]:
            from dags.stage_tasks import pipeline_config, task_result
            from include.release import steps

            return task_result(steps.bake_step(pipeline_config().config, steps.Release.from_xcom(release), step))

        return bake_step

    @task
    def promote(release: dict[str, Any]) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config, task_result
        from include.release import steps

        return task_result(steps.promote(pipeline_config().config, steps.Release.from_xcom(release)))

    @task
    def confirm(release: dict[str, Any]) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config, task_result
        from include.release import steps

        return task_result(steps.confirm(pipeline_config().config, steps.Release.from_xcom(release)))

    @task(trigger_rule="one_failed", retries=2)
    def abort(run_id: str | None = None, ti: Any = None) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config
        from include.release import steps

        release = ti.xcom_pull(task_ids="begin")  # None when begin failed: nothing began, nothing to abort
        states = ti.get_task_states(dag_id="ml_release", run_ids=[run_id]).get(run_id, {})
        failed = sorted(task_id for task_id, state in states.items() if state == "failed")
        ended = steps.abort(pipeline_config().config, steps.Release.from_xcom(release) if release else None, failed)
        return ended.xcom() if ended else {"aborted": None, "failed": failed}

    release = begin()
    chained: list[Any] = [release]
    for step in PLAN.steps():
        chained += [start(step)(release), bake(step)(release)]
    if PLAN.approval:
        from airflow.providers.standard.operators.hitl import ApprovalOperator

        last = PLAN.steps()[-1].name
        chained.append(ApprovalOperator(
            task_id="approve", subject=f"Promote {MODEL_NAME} " + "v{{ ti.xcom_pull(task_ids='begin')['version'] }}"
                                       " to 100 % of the traffic?",
            body="Every step passed. Last look: {{ ti.xcom_pull(task_ids='bake_" + last + "')['summary'] }}\n\n"
                 "Reject (or no answer within release.approval_timeout_hours) aborts the release.",
            defaults="Reject", fail_on_reject=True, response_timeout=timedelta(hours=PLAN.approval_timeout_hours)))
    chained.append(promote(release))
    chain(*chained, confirm(release))
    chained >> abort()  # confirm is no upstream of abort: a leaf that an abort leaves upstream_failed (the run fails)


ml_release()
