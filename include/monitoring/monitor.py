"""The monitor: the champion's captured traffic of a period against its training data, and its live quality.

Attribution drift (attribution.py) sits beside feature drift: a column whose share of the champion's mean
|attribution| moved is among `drifted` as `attribution:<column>`, so it emits the drift Asset as a drifted feature
does. Writes report.html and summary.json to the run's monitor/ folder, and logs both with the per-feature numbers
to MLflow's `<experiment>-monitoring` experiment: one run per period and model version (a re-run of the period logs
into the same run), tagged with the model name and version.

The capture is read in partitions of its days (partials.py): `plan`, one `partials.reduce` per partition, then
`conclude` merges them and measures; `monitor` runs the three in one process, ml_monitor as tasks. One path: the
numbers are the same whatever the partitioning.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from include.ml import artifacts, registry, tracking
from include.ml.entities import MonitorJob
from include.monitoring import attribution, capture, drift, partials, quality, reference, report

log = logging.getLogger(__name__)

REPORT = "report.html"
# Each partition's partial (partials.py), beside the report's folder (not in it: the plugin serves that folder, and a
# partial holds captured rows), removed once merged.
PARTIALS = "-partials"
SUMMARY = "summary.json"
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]+")  # what MLflow accepts in a metric name


@dataclass(frozen=True)
class MonitorResult:
    model_name: str
    version: str
    period_start: str
    period_end: str
    rows_reference: int
    rows_current: int
    drifted: list[str]  # the drifted features, then the columns of attribution drift as `attribution:<column>`
    drift_details: list[str]  # one line per drifted feature or attribution: its statistics and thresholds
    not_enough_data: bool
    prediction_drifted: bool
    quality: str | None  # the live-quality line; None without ground truth
    quality_dropped: bool
    report_path: str
    summary_path: str
    mlflow_run_id: str
    mlflow_run_url: str

    def summary(self) -> str:
        head = (f"{self.model_name} v{self.version}, {self.rows_current} captured rows vs {self.rows_reference} "
                "reference rows")
        features = [d for d in self.drifted if not d.startswith(attribution.PREFIX)]
        attributions = [d.removeprefix(attribution.PREFIX) for d in self.drifted if d.startswith(attribution.PREFIX)]
        if self.not_enough_data and not self.drifted:
            verdict = "not enough data for a drift verdict"
        elif self.drifted:
            verdict = "; ".join(
                ([f"DRIFT in {len(features)} feature(s): {', '.join(features)}"] if features else [])
                + ([f"ATTRIBUTION DRIFT in {', '.join(attributions)}"] if attributions else []))
        else:
            verdict = "no drift"
        predictions = "; predictions drifted" if self.prediction_drifted else ""
        live = f"; {self.quality}" if self.quality else ""
        return f"{head}: {verdict}{predictions}{live}"

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links monitor_report and mlflow_run_url
        return {"summary": self.summary(), "model_name": self.model_name, "version": self.version,
                "drifted": self.drifted,
                "drift_details": self.drift_details, "not_enough_data": self.not_enough_data,
                "prediction_drifted": self.prediction_drifted, "quality_dropped": self.quality_dropped,
                "rows": {"reference": self.rows_reference, "current": self.rows_current},
                "monitor_report": self.report_path, "mlflow_run_id": self.mlflow_run_id,
                "mlflow_run_url": self.mlflow_run_url}


def monitor(config: MonitorJob, run_id: str, end: datetime, output_dir: Path,
            partitions: int | None = 1) -> MonitorResult | None:
    """The period of `params.period_hours` before `end`; None when the model has no champion yet. Its capture days
    are read in `partitions` (None: one per day), one after the other, each reduced to a partial in
    <output_dir>-partials, then merged: the steps of ml_monitor's tasks, in one process."""
    planned = plan(config, end, output_dir, partitions)
    if planned is None:
        return None
    for index in range(len(planned.partitions)):
        partials.save(partials.reduce(config.capture, config.schema, planned, index), planned.path(index))
    return conclude(config, run_id, planned, output_dir)


def plan(config: MonitorJob, end: datetime, output_dir: Path,
         partitions: int | None = None) -> partials.MonitorPlan | None:
    """The champion version (fixed for every partition), the period and its partitions; None without a champion."""
    tracking.configure(config.mlflow)
    name = config.mlflow.registered_model_name
    version = registry.champion_version(name)
    if version is None:
        return None
    classes: tuple[str, ...] = ()
    if config.schema.task == "classification":
        classes = tuple(str(c) for c in registry.load_model(f"models:/{name}/{version}").classes_)
    sample_rows = max(config.params.attribution.rows, config.params.min_rows)
    return partials.plan(name, version, end - timedelta(hours=config.params.period_hours), end, classes,
                         output_dir.with_name(output_dir.name + PARTIALS), sample_rows,
                         bool(config.capture.ground_truth_uri), partitions)


def conclude(config: MonitorJob, run_id: str, planned: partials.MonitorPlan, output_dir: Path) -> MonitorResult:
    """The plan's partials merged, compared with the champion's reference: report, summary, MLflow run. The
    partials are removed once all is written."""
    tracking.configure(config.mlflow)
    name, version = planned.model_name, planned.version
    start, end = planned.window
    ref = reference.load(name, version, config.schema, config.artifacts_root)
    merged = partials.merge([partials.load(planned.path(i)) for i in range(len(planned.partitions))], config.schema,
                            planned.sample_rows)
    current = merged.current
    specs = {c.name: c for c in config.schema.features}
    compared = drift.compare(ref.features, current, drift.kinds_from_schema(config.schema.features), config.params,
                             specs)
    kind: drift.Kind = "numeric" if config.schema.task == "regression" else "categorical"
    predicted = current[capture.PREDICTION]
    compared = replace(compared, prediction=drift.compare_one("prediction", ref.predictions, predicted, kind,
                                                              config.params))
    live = None
    if config.capture.ground_truth_uri and merged.keys is not None:
        sources = config.capture
        truth = quality.read_ground_truth(sources.ground_truth_uri, config.schema, sources.s3_endpoint_url)
        live = quality.live_quality(merged.keys, truth, config.schema, config.promotion, ref.test_metrics,
                                    config.params.min_rows, config.params.quality_drop, merged.probabilities)
    attributed = _attribution(config, ref, merged.sample)
    details = [compared.features[n].describe() for n in compared.drifted]
    if compared.prediction is not None and compared.prediction.drifted:
        details.append(compared.prediction.describe())
    details += attributed.details()
    lines = [f"{name} v{version}: captured {start.isoformat()} to {end.isoformat()} ({len(current)} rows) vs "
             f"{len(ref.features)} rows of {ref.source} (pipeline run {ref.pipeline_run_id})",
             f"drifted: {', '.join(compared.drifted) or 'none'}", attributed.describe(), *details]
    if live is not None:
        lines.append(live.describe())
    lines += [f"skipped capture file {why}" for why in merged.skipped]  # past monitoring.max_file_mb / _rows
    header = {"model_name": name, "version": version, "period_start": start.isoformat(), "period_end": end.isoformat(),
              "reference": ref.source, "run_id": run_id, "skipped_capture_files": list(merged.skipped),
              "partitions": len(planned.partitions), "capture_files": merged.files}
    summary = {**header, **compared.to_json(), "attribution_drift": attributed.to_json(),
               "quality": None if live is None else asdict(live)}
    page = report.render(f"Monitoring {name} v{version}, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC",
                         lines, compared, ref.features, current, (ref.predictions, predicted), attributed)
    artifacts.write_bytes(output_dir / REPORT, page.encode())
    artifacts.write_json(output_dir / SUMMARY, summary)
    mlflow_run_id, url = _log_to_mlflow(config, name, version, start, end, run_id, (compared, attributed), live,
                                        output_dir)
    shutil.rmtree(planned.folder, ignore_errors=True)
    if details:
        log.warning("monitor: drift in %s v%s:\n  %s", name, version, "\n  ".join(details))
    result = MonitorResult(
        name, version, start.isoformat(), end.isoformat(), len(ref.features), len(current),
        [*compared.drifted, *(attribution.PREFIX + c for c in attributed.drifted)], details,
        compared.not_enough_data, bool(compared.prediction and compared.prediction.drifted),
        None if live is None else live.describe(), bool(live and live.dropped), str(output_dir / REPORT),
        str(output_dir / SUMMARY), mlflow_run_id, url)
    log.info("monitor: %s", result.summary())
    return result


def _attribution(config: MonitorJob, ref: reference.Reference, current: Any) -> attribution.AttributionDrift:
    """The champion's attributions on the captured rows (the partials' bottom-k sample of them) against those frozen
    at evaluate (or computed now)."""
    frozen = attribution.frozen_profile(ref.mlflow_run_id,
                                        config.artifacts_root / ref.pipeline_run_id / attribution.EVALUATE)
    return attribution.measure(ref.model, ref.model_name, ref.version, config.schema, ref.features, current, frozen,
                               config.params.attribution, config.params.min_rows)


def metric_key(feature: str) -> str:
    """A feature's name as MLflow takes it in a metric name: only the characters it accepts, and no path that would
    resolve to another name (`a//b`, `./`, `..`: MLflow refuses those, and the whole monitor run with them)."""
    parts = _METRIC_KEY.sub("_", feature).split("/")
    return "/".join(part for part in parts if part not in ("", ".", "..")) or "_"


def _log_to_mlflow(config: MonitorJob, name: str, version: str, start: datetime, end: datetime, run_id: str,
                   reports: tuple[drift.DriftReport, attribution.AttributionDrift], live: quality.LiveQuality | None,
                   output_dir: Path) -> tuple[str, str]:
    import mlflow

    experiment_id = tracking.configure(config.mlflow.model_copy(update={"experiment_name": config.experiment_name}))
    compared, attributed = reports
    tags = {"model_name": name, "model_version": version, "period_end": end.isoformat()}
    existing = mlflow.search_runs([experiment_id], " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items()),
                                  output_format="list", max_results=1)
    with mlflow.start_run(run_id=existing[0].info.run_id if existing else None, experiment_id=experiment_id,
                          run_name=None if existing else f"{name}-v{version}-{end:%Y%m%dT%H%M}") as run:
        mlflow.set_tags({**tags, "period_start": start.isoformat(), "pipeline_run_id": run_id,
                         "drifted": json.dumps(compared.drifted),
                         "attribution_drifted": json.dumps(attributed.drifted)})
        metrics: dict[str, float] = {"rows_current": compared.rows_current, "rows_reference": compared.rows_reference,
                                     "drifted_features": len(compared.drifted)}
        for feature in [*compared.features.values(), *([compared.prediction] if compared.prediction else [])]:
            key = metric_key(feature.name)
            metrics[f"{key}.drifted"] = float(feature.drifted)
            metrics[f"{key}.missing_rate"] = feature.missing_current
            for field in ("statistic", "p_value", "p_adjusted", "distance", "out_of_range", "outside_reference"):
                if getattr(feature, field) is not None:
                    metrics[f"{key}.{field}"] = getattr(feature, field)
        metrics |= _attribution_metrics(attributed)
        if live is not None:
            metrics |= {f"live_{k}": v for k, v in live.metrics.items()} | {"live_rows": live.rows,
                                                                            "quality_dropped": float(live.dropped)}
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(output_dir / REPORT))
        mlflow.log_artifact(str(output_dir / SUMMARY))
    return run.info.run_id, tracking.run_url(config.mlflow, experiment_id, run.info.run_id)


def _attribution_metrics(attributed: attribution.AttributionDrift) -> dict[str, float]:
    """Per input column `attribution/<column>.<share_reference|share_current|change|ratio|drifted>`."""
    metrics: dict[str, float] = {"attribution_drifted": float(len(attributed.drifted))} if attributed.columns else {}
    for name, column in attributed.columns.items():
        key = f"attribution/{metric_key(name)}"
        metrics |= {f"{key}.share_reference": column.share_reference, f"{key}.share_current": column.share_current,
                    f"{key}.change": column.change, f"{key}.drifted": float(column.drifted)}
        if column.ratio is not None:
            metrics[f"{key}.ratio"] = column.ratio
    return metrics
