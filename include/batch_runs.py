"""Runs batch prediction: `python main.py predict` (one process, or its partitions one after the other) and the
three tasks of ml_batch_predict (plan, score one partition, combine). Beside include/pipeline.py, which runs the
training stages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from include.ml import artifacts
from include.ml.configuration import ConfigurationManager

if TYPE_CHECKING:
    from include.release.batch import BatchPredictionResult
    from include.release.partition_runs import PartResult
    from include.release.partitions import BatchPlan


def run_predict(cm: ConfigurationManager, input_uri: str | None = None, output_uri: str | None = None,
                version: str = "champion", form_output: bool = False,
                on_bad_rows: str | None = None, explain: bool = False,
                partitions: int | None = None) -> BatchPredictionResult:
    """Score the CSV or Parquet `input_uri` with a registered version (number or alias) into `output_uri` (.csv or
    .parquet); by default batch.input_uri and batch.output_uri. The caller checks the input against the allow-list;
    with `form_output` (a trigger form's), the output must lie under batch.allowed_outputs. `on_bad_rows` (fail,
    skip, flag; None: batch.on_bad_rows) says what a row that breaks schema.yaml does; `explain` adds each row's
    explanation columns (include/release/batch_explain.py). With `partitions`, the input is planned, scored and
    combined in that many partitions, one after the other (include/release/partition_runs.py); an output ending in
    "/" is a Parquet dataset directory, a file per partition (include/release/parquet_dataset.py)."""
    from include.release.batch import predict_file
    from include.release.partition_runs import predict_partitioned

    input_uri, output_uri = _predict_uris(cm, input_uri, output_uri, form_output)
    if partitions or output_uri.endswith("/"):  # a Parquet dataset directory: only a partitioned run writes one
        return predict_partitioned(cm.batch_prediction(), input_uri, output_uri, partitions or 1, version,
                                   on_bad_rows, explain)
    return predict_file(cm.batch_prediction(), input_uri, output_uri, version, on_bad_rows, explain)


def run_predict_plan(cm: ConfigurationManager, run_id: str, input_uri: str | None, output_uri: str | None,
                     version: str = "champion", on_bad_rows: str | None = None, explain: bool = False,
                     partitions: int | None = None) -> BatchPlan:
    """ml_batch_predict's plan: the input's partitions (`partitions`, else batch.partition_mb or batch.partitions),
    their parts staged under <artifacts_root>/<run id>/predict/parts (a folder every worker reaches), the version
    exported once. The output must lie under batch.allowed_outputs (a trigger form's)."""
    from include.release.partitions import plan_partitions

    input_uri, output_uri = _predict_uris(cm, input_uri, output_uri, form_output=True)
    staging = artifacts.stage_dir(cm.config.artifacts_root, run_id, "predict") / "parts"
    return plan_partitions(cm.batch_prediction(), input_uri, output_uri, staging, version, on_bad_rows, explain,
                           partitions)


def run_predict_partition(cm: ConfigurationManager, plan: dict[str, Any], partition: dict[str, Any]) -> PartResult:
    """Score one partition of a plan (run_predict_plan's XCom) into its part; a retry of a done one is a no-op."""
    from include.release.partition_runs import score_partition
    from include.release.partitions import BatchPlan, Partition

    return score_partition(cm.batch_prediction(), BatchPlan.of(plan), Partition.of(partition))


def run_predict_combine(cm: ConfigurationManager, plan: dict[str, Any]) -> BatchPredictionResult:
    """Combine the parts of every partition of a plan into its output, with a manifest, atomically."""
    from include.release.partition_runs import combine
    from include.release.partitions import BatchPlan

    return combine(cm.batch_prediction(), BatchPlan.of(plan))


def _predict_uris(cm: ConfigurationManager, input_uri: str | None, output_uri: str | None,
                  form_output: bool) -> tuple[str, str]:
    from include.ml.exceptions import BatchPredictionError
    from include.release.batch import allowed_output

    batch = cm.config.batch
    if output_uri and form_output:
        output_uri = allowed_output(output_uri, batch, cm.config.project_root)
    input_uri, output_uri = input_uri or batch.input_uri, output_uri or batch.output_uri
    if not input_uri or not output_uri:
        raise BatchPredictionError("give the input and the output (or set batch.input_uri and batch.output_uri "
                                   "in config.yaml)")
    return input_uri, output_uri
