"""
### ml_batch_predict: score a CSV file with the champion

One task, **predict**: `run_predict` of `include/pipeline.py`, the same code as
`python main.py predict --input <uri> --output <uri>`. It reads the input (in `data_source.separator`'s CSV format,
with or without the target column) chunk by chunk (`batch.chunk_rows`), checks each chunk with the Great
Expectations suite of `schema.yaml` (the features, and the id and ignore columns the file has), scores it with the
registered version through the prediction server's own loader (in batches bounded by `batch.encoded_mb`), and
writes the row key (the schema's id columns, else `batch.id_column`), the prediction (and class probabilities) and
the model's name and version to a CSV or Parquet file, renamed into place (or uploaded to S3) only once complete.
Its XCom holds the rows, chunks, seconds, version and bad rows.

**Params** (*Trigger DAG* → run configuration)

* `input`: the CSV to score: a local path, `http(s)://` or `s3://` URI within `data_source.allowed_sources` of
  `config.yaml`; empty = `batch.input_uri`.
* `output`: where the predictions go: a local path or `s3://` URI ending in `.csv` or `.parquet`, within
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


@dag(
    dag_id="ml_batch_predict",
    description="Score a CSV file with the champion into CSV or Parquet (include/release/batch.py)",
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
                                    ".parquet, within batch.allowed_outputs of config.yaml; empty = batch.output_uri"),
        "version": Param(None, type=["null", "string"],
                         description="Registered model version number or alias; empty = the champion"),
        "on_bad_rows": Param(None, type=["null", "string"], enum=[None, "fail", "skip", "flag"],
                             description="A row that breaks schema.yaml: fail the run, skip it or flag it (skip and "
                                         "flag list the reasons in <output>.rejected.csv); empty = batch.on_bad_rows"),
        "explain": Param(False, type="boolean",
                         description="Also explain each prediction: a contribution:<column> column per input column, "
                                     "explain_base_value, explain_output (as the prediction server's POST /explain)"),
    },
)
def ml_batch_predict() -> None:
    @task
    def predict(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config, task_result
        from include.pipeline import run_predict

        cm = pipeline_config({"source": params["input"]})  # checks the input against data_source.allowed_sources
        return task_result(run_predict(cm, params["input"] and cm.config.data_source.uri,  # as checked: absolute
                                       params["output"], params["version"] or "champion", form_output=True,
                                       on_bad_rows=params.get("on_bad_rows"), explain=bool(params.get("explain"))))

    predict()


ml_batch_predict()
