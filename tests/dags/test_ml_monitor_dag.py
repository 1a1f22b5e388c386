"""ml_monitor's shape (plan -> partial, mapped -> monitor -> signal_drift; the drift Asset only on the signal
task) and ml_pipeline's schedule for each airflow.retrain_on, parsed by Airflow in a fresh interpreter as in
test_dag_integrity.py."""

from __future__ import annotations

import pytest

from tests.dags.test_dag_integrity import DAGS, _python

pytestmark = pytest.mark.integration  # Airflow runs in a fresh interpreter

SCHEDULES = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
out = {}
for mode in ("schedule", "drift", "both"):
    os.environ["MLOPS_RETRAIN_ON"] = mode
    bag = DagBag(sys.argv[1])
    assert not bag.import_errors, bag.import_errors
    pipeline, monitor = bag.dags["ml_pipeline"], bag.dags["ml_monitor"]
    out[mode] = {"timetable": type(pipeline.timetable).__name__, "summary": repr(pipeline.timetable),
                 "monitor_schedule": repr(monitor.timetable), "tasks": [t.task_id for t in monitor.tasks],
                 "outlets": {t.task_id: [o.name for o in t.outlets] for t in monitor.tasks},
                 "retries": [t.retries for t in monitor.tasks], "tags": sorted(monitor.tags),
                 "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in monitor.tasks},
                 "mapped": [t.task_id for t in monitor.tasks if "Mapped" in type(t).__name__]}
print(json.dumps(out))
"""


def test_ml_monitor_signals_drift_and_retrain_on_picks_ml_pipelines_schedule(tmp_path) -> None:
    found = _python(SCHEDULES, str(DAGS), home=tmp_path)
    monitor = found["schedule"]
    assert sorted(monitor["tasks"]) == ["monitor", "partial", "plan", "signal_drift"] and min(monitor["retries"]) >= 1
    assert monitor["outlets"] == {"plan": [], "partial": [], "monitor": [], "signal_drift": ["wine-quality-drift"]}
    # plan -> partial (mapped over the plan's partitions) -> monitor (the merge: report, MLflow) -> signal_drift
    assert monitor["upstream"] == {"plan": [], "partial": ["plan"], "monitor": ["partial", "plan"],
                                   "signal_drift": ["monitor"]} and monitor["mapped"] == ["partial"]
    assert "'0 6 * * *'" in monitor["monitor_schedule"] and "monitoring" in monitor["tags"]
    assert found["schedule"]["timetable"] == "CronTriggerTimetable" and "'0 2 * * *'" in found["schedule"]["summary"]
    assert found["drift"]["timetable"] == "AssetTriggeredTimetable"
    assert found["both"]["timetable"] == "AssetOrTimeSchedule" and "0 2 * * *" in found["both"]["summary"]
