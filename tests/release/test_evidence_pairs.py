"""The release's paired capture rows joined to their labels, and the decision they lead to.

Capture files are written here in the paired-row form of the capture contract (docs/serving.md, "Releases"): the
answer the client got at the top level, and both models' answers under `champion` and `candidate`.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pytest

from include.ml.config_file import MonitoringSources
from include.release.evidence import EvidenceError, FleetSnapshot, ReleaseGate, evaluate_step, labelled_pairs
from include.release.evidence.pairs import join_labels, read_pairs
from include.release.evidence.quality import judge_quality
from include.release.evidence.settings import QualityTest
from tests.support import typed
from tests.support.frames import schema

WHEN = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
MODEL = "wine"


def record(request: str, row: int, when: datetime, champion: Any, candidate: Any | None, *,
           versions: tuple[str, str] = ("1", "2"), probabilities: Sequence[dict[str, float] | None] = (None, None),
           key: dict[str, Any] | None = None) -> dict[str, Any]:
    line = {"request_id": request, "row": row, "timestamp": when.isoformat().replace("+00:00", "Z"),
            "model_name": MODEL, "model_version": versions[0], "served_by": "champion", "inputs": {"x1": 0.5},
            "prediction": champion, "probabilities": probabilities[0], **({"key": key} if key else {})}
    if candidate is not None:
        line |= {"champion": {"version": versions[0], "prediction": champion, "probabilities": probabilities[0]},
                 "candidate": {"version": versions[1], "prediction": candidate, "probabilities": probabilities[1]}}
    return line


def write(capture_dir: Path, records: list[dict[str, Any]], name: str = "host-1") -> None:
    day = records[0]["timestamp"][:10]
    folder = capture_dir / MODEL / day
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{name}.jsonl.gz", "wt") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)


def regression_release(tmp_path: Path, rows: int, candidate_noise: float, seed: int = 0) -> MonitoringSources:
    """`rows` paired requests of one row each (champion error sd 1, the candidate's `candidate_noise`), their
    labels in truth.csv, and rows the reader must leave out: unpaired, another candidate version, too late."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=rows)
    champion, candidate = y + rng.normal(size=rows), y + rng.normal(scale=candidate_noise, size=rows)
    records = [record(f"r{i}", 0, WHEN + timedelta(milliseconds=i), champion[i], candidate[i]) for i in range(rows)]
    records += [record("solo", 0, WHEN, 1.0, None), record("other", 0, WHEN, 1.0, 9.0, versions=("1", "3")),
                record("late", 0, WHEN + timedelta(hours=2), 1.0, 2.0)]
    write(tmp_path / "capture", records)
    truth = pd.DataFrame({"request_id": [f"r{i}" for i in range(rows)] + ["solo", "other", "late"],
                          "y": [*y, 0.0, 0.0, 0.0]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    return MonitoringSources(capture_dir=str(tmp_path / "capture"), ground_truth_uri=str(tmp_path / "truth.csv"))


def test_the_pairs_of_the_release_are_read_and_joined_in_capture_order(tmp_path: Path) -> None:
    sources = regression_release(tmp_path, 50, 1.0)
    found = read_pairs(sources, MODEL, "1", "2", WHEN, WHEN + timedelta(hours=1))
    assert [r["request_id"] for r in found] == [f"r{i}" for i in range(50)]
    pairs = labelled_pairs(sources, schema("regression"), MODEL, "1", "2", WHEN, WHEN + timedelta(hours=1))
    assert pairs is not None and len(pairs) == 50 and pairs.captured == 50
    truth = pd.read_csv(tmp_path / "truth.csv")
    assert pairs.y.tolist() == pytest.approx(truth["y"][:50].tolist())
    assert pairs.champion[0] == pytest.approx(found[0]["champion"]["prediction"])
    # labels that match no pair yet, and no labels configured: nothing to judge, no error
    early = join_labels(found, pd.DataFrame({"request_id": ["x"], "row": [0], "y": [1.0]}), schema("regression"))
    judged = judge_quality(early, "rmse", QualityTest())
    assert judged.verdict == "no_labels" and judged.note == "none of the 50 paired rows has a label yet"
    unlabelled = MonitoringSources(capture_dir=sources.capture_dir)
    assert labelled_pairs(unlabelled, schema("regression"), MODEL, "1", "2", WHEN, WHEN + timedelta(hours=1)) is None


def test_a_worse_candidate_aborts_on_its_live_rmse_and_a_twin_does_not(tmp_path: Path) -> None:
    start, now = FleetSnapshot(0.0, {}), FleetSnapshot(60.0, {})
    worse = regression_release(tmp_path / "worse", 600, 2.0)
    pairs = labelled_pairs(worse, schema("regression"), MODEL, "1", "2", WHEN, WHEN + timedelta(hours=1))
    decision = evaluate_step(ReleaseGate(), "regression", "rmse", start, now, pairs)
    assert decision.quality == "worse" and decision.alarm and "live rmse: worse" in decision.alarm
    assert decision.figures["quality_rows"] == 600 and decision.figures["quality_lower"] > 0
    twin = regression_release(tmp_path / "twin", 600, 1.0)
    pairs = labelled_pairs(twin, schema("regression"), MODEL, "1", "2", WHEN, WHEN + timedelta(hours=1))
    assert evaluate_step(ReleaseGate(), "regression", "rmse", start, now, pairs).alarm is None


def test_a_reused_request_id_joins_its_first_capture_and_a_key_joins_every_capture(tmp_path: Path) -> None:
    first, again = record("dup", 0, WHEN, 1.0, 1.5), record("dup", 0, WHEN + timedelta(seconds=1), 8.0, 9.0)
    pairs = join_labels([first | {"timestamp": pd.Timestamp(WHEN)},
                         again | {"timestamp": pd.Timestamp(WHEN + timedelta(seconds=1))}],
                        pd.DataFrame({"request_id": ["dup"], "row": [0], "y": [1.0]}), schema("regression"))
    assert pairs.champion.tolist() == [1.0] and pairs.candidate.tolist() == [1.5]
    keyed = typed.schema("regression")
    records = [record(f"k{i}", 0, WHEN, float(i), float(i) + 1, key={"flight_id": 17 + i % 2}) | {
        "timestamp": pd.Timestamp(WHEN)} for i in range(4)]
    truth = pd.DataFrame({"flight_id": ["17", "18"], "arr_delay": [0.0, 1.0]})
    joined = join_labels(records, truth, keyed)
    assert joined.y.tolist() == [0.0, 1.0, 0.0, 1.0] and joined.candidate.tolist() == [1.0, 2.0, 3.0, 4.0]


def classification_records(rows: int, seed: int, probabilities: bool = True) -> tuple[list[dict[str, Any]],
                                                                                       pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = rng.choice(["a", "b"], size=rows)
    records, p = [], rng.uniform(0.05, 0.95, size=(rows, 2))
    for i in range(rows):
        proba = [{"a": 1 - p[i, j], "b": p[i, j]} if probabilities else None for j in (0, 1)]
        labels = ["b" if p[i, j] > 0.5 else "a" for j in (0, 1)]
        records.append(record(f"c{i}", 0, WHEN + timedelta(milliseconds=i), labels[0], labels[1],
                              probabilities=proba) | {"timestamp": pd.Timestamp(WHEN + timedelta(milliseconds=i))})
    return records, pd.DataFrame({"request_id": [f"c{i}" for i in range(rows)], "row": 0, "y": y})


@pytest.mark.parametrize("metric, unit", [("log_loss", "row"), ("brier_score", "row"), ("accuracy", "row"),
                                          ("roc_auc", "block"), ("pr_auc", "block"), ("f1_macro", "block"),
                                          ("balanced_accuracy", "block")])
def test_every_classification_metric_is_judged_from_captured_pairs(metric: str, unit: str) -> None:
    records, truth = classification_records(300, 1)
    pairs = join_labels(records, truth, schema("classification"))
    assert pairs.classes == ("a", "b") and pairs.champion_proba is not None
    judged = judge_quality(pairs, metric, QualityTest())
    assert judged.unit == unit and judged.rows == 300
    assert judged.bounds is not None and judged.bounds.n == (300 if unit == "row" else 3)


def test_probability_metrics_need_captured_probabilities() -> None:
    records, truth = classification_records(50, 2, probabilities=False)
    pairs = join_labels(records, truth, schema("classification"))
    with pytest.raises(EvidenceError, match="live log_loss needs both models' class probabilities"):
        judge_quality(pairs, "log_loss", QualityTest())
    assert judge_quality(pairs, "accuracy", QualityTest()).rows == 50
    with pytest.raises(EvidenceError, match="'rmse' is not a classification metric"):
        judge_quality(pairs, "rmse", QualityTest())


def test_unreadable_capture_or_labels_are_an_evidence_error(tmp_path: Path) -> None:
    sources = regression_release(tmp_path, 5, 1.0)
    (tmp_path / "truth.csv").write_text("request_id,z\nr0,1\n")
    with pytest.raises(EvidenceError, match=r"live quality cannot be judged: ground truth .* lacks the column"):
        labelled_pairs(sources, schema("regression"), MODEL, "1", "2", WHEN, WHEN + timedelta(hours=1))
    folder = tmp_path / "capture" / MODEL / WHEN.date().isoformat()
    (folder / "broken.jsonl.gz").write_bytes(gzip.compress(b"{not json\n"))
    with pytest.raises(EvidenceError, match="is not valid capture JSON lines"):
        labelled_pairs(sources, schema("regression"), MODEL, "1", "2", WHEN, WHEN + timedelta(hours=1))
