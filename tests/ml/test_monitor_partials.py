"""The monitor's partitions (include/monitoring/partials.py): capture files of several days reduced per partition
and merged give drift numbers EQUAL (==) to those of one process reading every file (capture.collect, then
drift.compare), whatever the partitioning; the bottom-k sample of the merge is the bottom-k of the union; the label
join's keys are the collected rows'; a missing or inconsistent partial is a clear error."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.ml.config_file import MonitoringSources
from include.ml.params_file import AttributionPolicy, MonitoringPolicy
from include.monitoring import capture, drift, partials
from include.monitoring.monitor import monitor
from tests.ml.test_monitoring import champion, monitor_config  # noqa: F401 (champion: a fixture)
from tests.support import typed
from tests.support.capture import write_capture
from tests.support.frames import dataset

MODEL = "flights"
END = datetime(2026, 3, 5, 6, 0, tzinfo=timezone.utc)
START = END - timedelta(hours=96)  # 5 capture days, the first and last partly
CLASSES = ("early", "late", "on time")
POLICY = MonitoringPolicy(min_rows=20)
CAP_ROWS = 150  # monitoring.max_file_rows: one planted file is past it, skipped by both paths


def _inputs(task: str, rows: int, seed: int, shift: float) -> pd.DataFrame:
    """Captured inputs as the server writes them: datetimes as ISO text; the later days shifted, with a destination
    the reference never saw (a category only the current side has) and missing values."""
    frame = typed.frame(task, rows=rows, seed=seed)[list(typed.FEATURES)]
    frame["time_hour"] = pd.to_datetime(frame["time_hour"]).dt.strftime("%Y-%m-%dT%H:%M:%S")
    sched = pd.to_datetime(frame["sched"], unit="s")
    frame["sched"] = sched.dt.strftime("%Y-%m-%dT%H:%M:%S").where(sched.notna(), None)
    frame["dep_delay"] = frame["dep_delay"] + shift
    if shift:
        frame.loc[frame.index % 7 == 0, "dest"] = "D99"
        frame.loc[frame.index % 11 == 0, "dep_delay"] = np.nan
    return frame


def _predictions(task: str, rows: int, seed: int) -> tuple[Any, list[dict[str, float]] | None]:
    rng = np.random.default_rng(seed)
    if task == "regression":
        return np.round(rng.normal(10, 5, rows), 3), None
    labels = rng.choice(CLASSES, rows)
    weights = rng.dirichlet(np.ones(3), rows)
    return labels, [dict(zip(CLASSES, map(float, w))) for w in weights]


@pytest.fixture(params=["regression", "classification"])
def captured(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, MonitoringSources]:
    """Files on five days (several a day, one outside the period, one of another version, one past the row cap)."""
    task, folder = request.param, tmp_path / "capture"
    seed = 0
    for day in range(5):
        for hour in (1, 9, 17, 23):
            when = START.replace(hour=0) + timedelta(days=day, hours=hour)
            seed += 1
            rows = 40 + 4 * seed
            predicted, proba = _predictions(task, rows, seed)
            write_capture(folder, MODEL, "1", _inputs(task, rows, seed, 15.0 * (day >= 2)), predicted, when,
                          rows_per_request=3, probabilities=proba)
    predicted, proba = _predictions(task, 60, 99)
    write_capture(folder, MODEL, "2", _inputs(task, 60, 99, 0.0), predicted, END - timedelta(hours=3),
                  probabilities=proba)  # another version: left out
    write_capture(folder, MODEL, "1", _inputs(task, 200, 98, 0.0), *_predictions(task, 200, 98)[:1],
                  END - timedelta(hours=2))  # past CAP_ROWS: skipped
    return task, MonitoringSources(capture_dir=str(folder), max_file_rows=CAP_ROWS)


def _reference(task: str) -> tuple[pd.DataFrame, pd.Series]:
    frame = typed.frame(task, rows=600, seed=1000)
    predicted, _ = _predictions(task, 300, 1000)
    return frame[list(typed.FEATURES)], pd.Series(predicted, name="prediction")


def _drift(task: str, current: pd.DataFrame) -> dict[str, Any]:
    """The monitor's drift numbers: every feature, then the prediction, as summary.json holds them."""
    schema = typed.schema(task)
    reference, predictions = _reference(task)
    compared = drift.compare(reference, current, drift.kinds_from_schema(schema.features), POLICY,
                             {c.name: c for c in schema.features})
    kind: drift.Kind = "numeric" if task == "regression" else "categorical"
    compared = dataclasses.replace(compared, prediction=drift.compare_one(
        "prediction", predictions, current[capture.PREDICTION], kind, POLICY))
    return json.loads(json.dumps(compared.to_json()))


def _partitioned(task: str, sources: MonitoringSources, folder: Path, partitions: int | None,
                 sample_rows: int = 50) -> tuple[partials.MonitorPlan, partials.Merged]:
    classes = CLASSES if task == "classification" else ()
    planned = partials.plan(MODEL, "1", START, END, classes, folder, sample_rows, True, partitions)
    for index in range(len(planned.partitions)):
        partials.save(partials.reduce(sources, typed.schema(task), planned, index), planned.path(index))
    loaded = [partials.load(planned.path(i)) for i in range(len(planned.partitions))]
    return planned, partials.merge(loaded, typed.schema(task), sample_rows)


def test_drift_numbers_are_equal_for_one_process_and_any_partitioning(
        captured: tuple[str, MonitoringSources], tmp_path: Path) -> None:
    task, sources = captured
    collected = capture.collect(sources, typed.schema(task), MODEL, "1", START, END,
                                CLASSES if task == "classification" else ())
    expected = _drift(task, collected.frame)
    # the data exercises what the statistics depend on: drift, tested datetime parts, a category only current has
    assert "dep_delay" in expected["drifted"] and "time_hour.hour" in expected["features"]
    assert expected["features"]["dest"]["out_of_range"] is None and expected["features"]["dep_delay"]["missing_current"]
    assert len(collected.skipped) == 1 and collected.files == 21

    for partitions in (1, 2, 3, None):
        planned, merged = _partitioned(task, sources, tmp_path / f"parts-{partitions}", partitions)
        assert len(planned.partitions) == (5 if partitions is None else partitions)
        assert _drift(task, merged.current) == expected, partitions
        assert (merged.files, merged.skipped) == (collected.files, collected.skipped)
        keys = collected.frame[[*capture.KEYS, "timestamp", typed.ID, capture.PREDICTION]]
        pd.testing.assert_frame_equal(merged.keys, keys)
        if task == "classification":
            pd.testing.assert_frame_equal(merged.probabilities, collected.probabilities)


def test_the_merged_bottom_k_sample_is_the_bottom_k_of_all_rows(captured: tuple[str, MonitoringSources],
                                                                tmp_path: Path) -> None:
    task, sources = captured
    _, everything = _partitioned(task, sources, tmp_path / "all", 1, sample_rows=10_000)  # every row
    assert len(everything.sample) == len(everything.current)
    whole = everything.sample.assign(_hash=partials.row_hash(everything.sample))
    for partitions in (1, 3, None):
        _, merged = _partitioned(task, sources, tmp_path / f"k-{partitions}", partitions, sample_rows=50)
        pd.testing.assert_frame_equal(merged.sample, everything.sample.head(50))
        assert len(merged.sample) == 50
        # bottom-k by the row hash: no row left out hashes lower than the sample's largest
        assert partials.row_hash(merged.sample).max() <= np.sort(whole["_hash"].to_numpy())[49]


def test_bottom_k_of_the_parts_bottom_k_is_the_bottom_k_of_the_union() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"request_id": [f"r{i // 3}" for i in range(400)], "row": np.arange(400) % 3,
                          "value": rng.normal(size=400)})
    frame = frame.assign(_hash=partials.row_hash(frame), _file=np.where(np.arange(400) < 150, "a", "b"),
                         _pos=np.arange(400) % 150)
    parts = [frame.iloc[:150], frame.iloc[150:260], frame.iloc[260:]]
    merged = partials.bottom_k(pd.concat([partials.bottom_k(p, 25) for p in parts]), 25)
    pd.testing.assert_frame_equal(merged, partials.bottom_k(frame, 25))
    assert sorted(merged["_hash"]) == sorted(np.sort(frame["_hash"].to_numpy())[:25])


def test_a_missing_or_inconsistent_partial_is_a_clear_error(captured: tuple[str, MonitoringSources],
                                                            tmp_path: Path) -> None:
    task, sources = captured
    planned = partials.plan(MODEL, "1", START, END, (), tmp_path / "parts", 10, False, 2)
    partials.save(partials.reduce(sources, typed.schema(task), planned, 0), planned.path(0))
    with pytest.raises(partials.PartialError, match="part-0001.npz is missing"):
        partials.load(planned.path(1))
    first = partials.load(planned.path(0))
    with pytest.raises(partials.PartialError, match="'dep_delay' has .* values .* for .* captured rows"):
        partials.merge([dataclasses.replace(first, rows=first.rows + 1)], typed.schema(task), 10)
    planned.path(1).write_bytes(b"not a partial")
    with pytest.raises(partials.PartialError, match="part-0001.npz cannot be read"):
        partials.load(planned.path(1))
    with pytest.raises(partials.PartialError, match="partition 2 is not in the plan"):
        partials.reduce(sources, typed.schema(task), planned, 2)


def test_a_retried_partition_overwrites_its_partial_whole(captured: tuple[str, MonitoringSources],
                                                          tmp_path: Path) -> None:
    task, sources = captured
    planned = partials.plan(MODEL, "1", START, END, (), tmp_path / "parts", 10, False, 2)
    assert planned.partitions == (("2026-03-01", "2026-03-02", "2026-03-03"), ("2026-03-04", "2026-03-05"))
    Path(planned.folder).mkdir(parents=True)
    planned.path(1).write_bytes(b"what a killed try left")
    partials.save(partials.reduce(sources, typed.schema(task), planned, 1), planned.path(1))
    first = partials.load(planned.path(1))
    partials.save(partials.reduce(sources, typed.schema(task), planned, 1), planned.path(1))
    again = partials.load(planned.path(1))
    assert [p.name for p in Path(planned.folder).iterdir()] == ["part-0001.npz"]  # no temporary file left
    assert again.rows == first.rows > 0 and len(again.skipped) == 1
    assert all(np.array_equal(again.numeric[n], first.numeric[n]) for n in first.numeric)


def test_a_whole_monitor_run_gives_the_same_summary_in_one_partition_or_one_per_day(
        champion: tuple[Any, Path, Any], tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    """monitor() against a real champion over four capture days (three with traffic), with labels: drift, live
    quality and attribution drift (explained on the bottom-k sample) the same with 1 partition and one a day (4);
    the partials removed once merged."""
    mlflow_config, artifacts_root, model = champion
    end = datetime(2026, 3, 3, 6, 0, tzinfo=timezone.utc)
    live, keys = dataset("regression", rows=300, seed=1), []
    for day in range(3):
        rows = live.iloc[day * 100:(day + 1) * 100].drop(columns=["y"])
        rows = rows.assign(x2=rows["x2"] + day)
        path = write_capture(tmp_path / "capture", "unit-model", "1", rows, model.predict(rows),
                             end - timedelta(hours=50 - 24 * day), rows_per_request=3)
        keys += [(r["request_id"], r["row"]) for r in pd.read_json(path, lines=True).to_dict("records")]
    pd.DataFrame(keys, columns=["request_id", "row"]).assign(y=live["y"].to_numpy()).to_csv(tmp_path / "truth.csv",
                                                                                          index=False)
    config = monitor_config(mlflow_config, artifacts_root, tmp_path / "capture", tmp_path / "truth.csv", min_rows=50,
                            period_hours=72,
                            attribution=AttributionPolicy(rows=120))
    summaries, counts = [], []
    for partitions in (1, None):
        out = tmp_path / f"out-{partitions}"
        result = monitor(config, f"run-{partitions}", end, out, partitions)
        assert result is not None and result.rows_current == 300 and result.quality is not None
        assert not (tmp_path / f"out-{partitions}-partials").exists()
        summary = json.loads((out / "summary.json").read_text())
        summaries.append({k: v for k, v in summary.items() if k not in ("run_id", "partitions")})
        counts.append(summary["partitions"])
    assert counts == [1, 4] and summaries[0] == summaries[1] and "x2" in summaries[0]["drifted"]
    assert summaries[0]["attribution_drift"]["rows"]["current"] == 120  # explained: the policy's rows of the sample
