"""
### ml_batch_predict: score a CSV or Parquet file with the champion, in partitions

Three steps, the code of `include/release/partitions.py` and `partition_runs.py` (`python main.py predict
--partitions N` runs the same steps one after the other):

1. **plan**: splits the input into partitions (`batch.partitions`, or `batch.partition_mb` MiB each, or the form's
   `partitions`): byte ranges of a CSV file aligned to line starts, row groups of a Parquet file, or the objects
   under an `s3://` prefix; exports the version to score with once.
2. **score** (one mapped task per partition, spread over the workers): reads its partition chunk by chunk
   (`batch.chunk_rows`), checks each chunk with the Great Expectations suite of `schema.yaml`, scores it through the
   prediction server's own loader (in batches bounded by `batch.encoded_mb`), and writes a part into the run's
   staging folder, renamed into place once complete: a retried partition never counts a killed try's rows.
3. **combine**: writes the parts, in order, as one CSV or Parquet file (the row key: the schema's id columns, else
   `batch.id_column`; the prediction, class probabilities, the model's name and version), with
   `<output>.manifest.json` (each partition's input range and rows in, out and bad), renamed into place (or uploaded
   to S3) only once complete: the output of one process scoring the whole file, row for row.
Its XCom holds the rows, chunks, partitions, seconds, version and bad rows.

**Params** (*Trigger DAG* → run configuration)

* `input`: the CSV or Parquet file to score (or an `s3://` prefix ending in `/`: its .csv and .parquet objects): a
  local path, `http(s)://` or `s3://` URI within `data_source.allowed_sources` of `config.yaml`; empty =
  `batch.input_uri`.
* `partitions`: how many partitions to score in parallel; empty = `batch.partitions` (or `batch.partition_mb`).
* `output`: where the predictions go: a local path or `s3://` URI ending in `.csv` or `.parquet`, or a local
  directory ending in `/` (a Parquet dataset: `part-NNNNN.parquet` per partition and `_manifest.json`), within
  `batch.allowed_outputs` of `config.yaml`; empty = `batch.output_uri`.
* `version`: a registered version number or alias; empty = the champion.
* `on_bad_rows`: what a row that breaks `schema.yaml` does: `fail` the run (nothing written), `skip` it (left out
  of the output) or `flag` it (kept, without a prediction, `rejected` true); skip and flag write every bad row's
  reasons to `<output>.rejected.csv`. Empty = `batch.on_bad_rows` (default fail).
* `explain`: also explain each prediction (`python main.py predict --explain`): a `contribution:<column>` column
  per input column, `explain_base_value`, `explain_output` (and `explain_class`). TreeSHAP on a large forest costs
  far more than the prediction (docs/benchmarks.md, "Explanations").

**Schedule**: `batch.schedule` of `config.yaml` (default none: only when triggered); a scheduled run scores
`batch.input_uri` into `batch.output_uri`.

**Failures**: a broken file (a missing or unexpected column; with fail, a wrong type), with fail rows that break the
schema (counted per expectation, with sample row ids, in the log), an input or output refused by its allow-list, an
unknown version or an unwritable output fail at once and leave no output (nor side file); anything else (an
unreachable source) is retried with backoff.

Parsing this file imports no ML library: they load inside the task.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.definitions.retry_policy import RetryAction, RetryRule

from dags.stage_tasks import default_args
from include.ml.configuration import project_config

PROJECT = project_config()  # config.yaml only, validated: a bad edit shows as this file's import error
MAX_PARTITIONS = 256  # include/release/partitions.py's bound (not imported: it loads pandas)


@dag(
    dag_id="ml_batch_predict",
    description="Score a CSV or Parquet file with the champion in partitions (include/release/partitions.py)",
    doc_md=__doc__,
    schedule=PROJECT.batch.schedule,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["ml", "batch", PROJECT.mlflow.registered_model_name],
    default_args=default_args(timedelta(hours=1), [
        RetryRule(exception=["include.ml.exceptions.DataValidationError", "include.ml.exceptions.ConfigError",
                             "include.ml.exceptions.SourceTooLargeError", "include.ml.exceptions.BatchPredictionError"],
                  action=RetryAction.FAIL, reason="bad input, output or configuration: retrying cannot fix it"),
        RetryRule(exception=["include.ml.exceptions.DeploymentError"],
                  action=RetryAction.FAIL, reason="the version cannot be exported: it is unknown or refused"),
    ]),
    params={
        "input": Param(None, type=["null", "string"],
                       description="CSV to score (local path, http(s):// or s3://), within data_source.allowed_sources "
                                   "of config.yaml; empty = batch.input_uri"),
        "output": Param(None, type=["null", "string"],
                        description="Where to write the predictions: a local path or s3:// URI ending in .csv or "
                                    ".parquet, or a local directory ending in / (a Parquet dataset, a file per "
                                    "partition), within batch.allowed_outputs of config.yaml; empty = "
                                    "batch.output_uri"),
        "version": Param(None, type=["null", "string"],
                         description="Registered model version number or alias; empty = the champion"),
        "on_bad_rows": Param(None, type=["null", "string"], enum=[None, "fail", "skip", "flag"],
                             description="A row that breaks schema.yaml: fail the run, skip it or flag it (skip and "
                                         "flag list the reasons in <output>.rejected.csv); empty = batch.on_bad_rows"),
        "partitions": Param(None, type=["null", "integer"], minimum=1, maximum=MAX_PARTITIONS,
                            description="Partitions scored in parallel (CSV byte ranges, Parquet row groups, s3 "
                                        "objects); empty = batch.partitions of config.yaml"),
        "explain": Param(False, type="boolean",
                         description="Also explain each prediction: a contribution:<column> column per input column, "
                                     "explain_base_value, explain_output (as the prediction server's POST /explain)"),
    },
)
def ml_batch_predict() -> None:
    @task
    def plan(params: dict[str, Any] | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """The plan, once per partition: what each mapped score task gets."""
        from dags.stage_tasks import pipeline_config, task_result
        from include.batch_runs import run_predict_plan

        cm = pipeline_config({"source": params["input"]})  # checks the input against data_source.allowed_sources
        planned = task_result(run_predict_plan(cm, run_id, params["input"] and cm.config.data_source.uri,  # checked
                                               params["output"], params["version"] or "champion",
                                               params.get("on_bad_rows"), bool(params.get("explain")),
                                               params.get("partitions")))
        return [{"plan": planned["plan"], "partition": partition} for partition in planned["partitions"]]

    @task(max_active_tis_per_dagrun=MAX_PARTITIONS)
    def score(work: dict[str, Any]) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config, task_result
        from include.batch_runs import run_predict_partition

        return task_result(run_predict_partition(pipeline_config(), work["plan"], work["partition"]))

    @task
    def combine(planned: list[dict[str, Any]], scored: list[dict[str, Any]]) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config, task_result
        from include.batch_runs import run_predict_combine

        return task_result(run_predict_combine(pipeline_config(), planned[0]["plan"]))

    planned = plan()
    combine(planned, score.expand(work=planned))

ml_batch_predict()
