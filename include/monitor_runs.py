"""Runs ml_monitor's tasks: plan (the champion version and the period's capture days in partitions), one partial
per partition (include/monitoring/partials.py) and the merge (drift, live quality, attribution drift, report,
MLflow). Beside include/batch_runs.py; `include.pipeline.run_monitor` runs the same steps in one process
(include/monitoring/monitor.py), so the numbers are the same."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.ml import artifacts
from include.ml.configuration import ConfigurationManager
from include.pipeline import Skipped

if TYPE_CHECKING:
    from include.monitoring.monitor import MonitorResult
    from include.monitoring.partials import MonitorPlan


@dataclass(frozen=True)
class PartialResult:
    partition: int
    days: tuple[str, ...]
    rows: int
    files: int
    skipped: tuple[str, ...]
    path: str

    def summary(self) -> str:
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (f"partition {self.partition} ({', '.join(self.days)}): {self.rows} captured rows from {self.files} "
                f"file(s){skipped}")

    def xcom(self) -> dict[str, Any]:
        return {"summary": self.summary(), "partition": self.partition, "rows": self.rows, "files": self.files,
                "skipped": list(self.skipped), "path": self.path}


def monitor_dir(cm: ConfigurationManager, run_id: str) -> Path:
    """The run's monitor/ folder: report.html and summary.json (what the plugin serves)."""
    return artifacts.stage_dir(cm.config.artifacts_root, run_id, "monitor")


def run_monitor_plan(cm: ConfigurationManager, run_id: str, end: datetime | None = None,
                     partitions: int | None = None) -> MonitorPlan | Skipped:
    """ml_monitor's plan: the champion version (every partition reads that one), the period of
    monitoring.period_hours before `end` and its capture days in `partitions` (None: one per day)."""
    from include.monitoring.monitor import plan

    planned = plan(cm.monitor(), end or datetime.now(timezone.utc), monitor_dir(cm, run_id), partitions)
    return planned or Skipped(f"nothing to monitor: {cm.config.mlflow.registered_model_name} has no champion yet")


def run_monitor_partial(cm: ConfigurationManager, plan: dict[str, Any], partition: int) -> PartialResult:
    """One partition of a plan (run_monitor_plan's XCom) reduced to its partial, written whole (a retry
    overwrites it)."""
    from include.monitoring import partials

    config, planned = cm.monitor(), partials.MonitorPlan.of(plan)
    reduced = partials.reduce(config.capture, config.schema, planned, partition)
    partials.save(reduced, planned.path(partition))
    return PartialResult(partition, planned.partitions[partition], reduced.rows, reduced.files, reduced.skipped,
                         str(planned.path(partition)))


def run_monitor_merge(cm: ConfigurationManager, run_id: str, plan: dict[str, Any]) -> MonitorResult:
    """The plan's partials merged and measured: report, summary, MLflow run (the XCom the links read)."""
    from include.monitoring.monitor import conclude
    from include.monitoring.partials import MonitorPlan

    return conclude(cm.monitor(), run_id, MonitorPlan.of(plan), monitor_dir(cm, run_id))
