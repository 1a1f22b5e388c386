"""The parts of bench/real_tables.py that decide what its report says: where a run failed, what the default
HistGradientBoosting model is fed, how the champion's scores are read and judged. (The harness itself runs
main.py as child processes and takes minutes: it is a benchmark, not a test.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import log_loss

from bench import real_tables

PROGRESS = "pipeline run bench: ingest -> validate -> transform\n[1/8] ingest ...\n[1/8] ingest done in 1.5s\n" \
           "[2/8] validate ...\n[2/8] validate done in 6.0s\n[3/8] transform ...\n"


def test_a_pipeline_error_is_reported_with_its_stage_and_whole_message() -> None:
    stderr = "12:00:01 INFO something\npipeline failed in stage transform: the schema would need 21.5 GiB;\n" \
             "  one-hot columns: tailnum (4,037 values)\n"
    stage, message = real_tables.failure(PROGRESS, stderr, 1, "pipeline")
    assert stage == "transform"
    assert message == "the schema would need 21.5 GiB; one-hot columns: tailnum (4,037 values)"


def test_an_uncaught_exception_is_reported_in_the_stage_that_was_running() -> None:
    stderr = "Traceback (most recent call last):\n  File \"main.py\", line 3, in <module>\n" \
             "numpy._core._exceptions._ArrayMemoryError: Unable to allocate 21.5 GiB for an array with shape " \
             "(261876, 11019) and data type float64\n"
    stage, message = real_tables.failure(PROGRESS, stderr, 1, "pipeline")
    assert stage == "transform"
    assert message.startswith("numpy._core._exceptions._ArrayMemoryError: Unable to allocate 21.5 GiB")


def test_a_killed_child_and_the_commands_own_errors_are_named() -> None:
    assert real_tables.failure(PROGRESS, "", -9, "pipeline") == \
        ("transform", "killed by SIGKILL (the out-of-memory killer?)")
    assert real_tables.failure("", "configuration error: schema.yaml: columns.x: unknown dtype\n", 2, "init") == \
        ("configuration", "schema.yaml: columns.x: unknown dtype")
    assert real_tables.failure("", "init failed: target 'arr_delay' has 9430 missing values\n", 1, "init") == \
        ("init", "target 'arr_delay' has 9430 missing values")
    assert real_tables.failure("", "", 3, "predict") == ("predict", "exit code 3, no output")


def test_stage_times_come_from_the_progress_lines() -> None:
    assert real_tables.stage_seconds(PROGRESS) == {"ingest": 1.5, "validate": 6.0}


def _split(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "row_id": np.arange(rows) + seed * 10_000,
        "name": [f"person {seed}-{i}" for i in range(rows)],
        "when": pd.Series(pd.date_range("2021-01-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S")),
        "colour": rng.choice(["red", "green", "blue"], rows),
        "plate": [f"P{v}" for v in rng.integers(0, 400, rows)],
        "size": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(size=rows)),
        "flag": rng.random(rows) < 0.5,
        "y": rng.integers(0, 2, rows),
    })


def test_the_default_model_gets_the_documented_column_treatment() -> None:
    train, test = _split(2_000, 0), _split(300, 1)
    test.loc[0, "colour"] = "violet"  # unseen in training
    x_train, x_test, treatment = real_tables.baseline_frames(train, test, "y")
    assert treatment["row_id"].startswith("dropped") and treatment["name"].startswith("dropped")
    assert treatment["when"].startswith("date-time")
    assert treatment["colour"] == "native categorical (3 values)"
    assert treatment["plate"].startswith("ordinal codes") and treatment["size"] == "number"
    assert treatment["flag"] == "0/1"
    assert list(x_train.columns) == list(x_test.columns)
    assert {"when.year", "when.month", "when.day", "when.dayofweek", "when.hour"} <= set(x_train.columns)
    assert x_train["when.hour"].iloc[5] == 5.0 and x_train["when.month"].iloc[0] == 1.0
    assert x_train["colour"].dtype.name == "category" and pd.isna(x_test["colour"].iloc[0])
    assert x_train["size"].isna().any()  # missing values are left to the model
    HistGradientBoostingClassifier(max_iter=5).fit(x_train, train["y"]).predict_proba(x_test)


def test_the_champion_is_scored_from_predicts_output_with_labels_as_text() -> None:
    y = pd.Series([0, 1, 1, 0, 1])
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4], [0.9, 0.1]])
    scored = pd.DataFrame({"id": range(5), "prediction": ["0", "1", "1", "0", "0"],
                           "probability_0": probabilities[:, 0], "probability_1": probabilities[:, 1]})
    scores = real_tables.predicted_scores("classification", scored, y)
    assert scores["log_loss"] == log_loss(y, probabilities)
    assert scores["accuracy"] == 0.8
    regression = real_tables.predicted_scores("regression", pd.DataFrame({"prediction": [1.0, 2.0]}),
                                              pd.Series([1.0, 4.0]))
    assert regression["rmse"] == np.sqrt(2.0)


def _result(table: str, task: str, tool: dict[str, float], baseline: dict[str, float], **extra: object) -> dict:
    return {"table": table, "task": task, "rows": 100, "steps": {},
            "comparison": {"tool_evaluate": tool, "baseline": baseline}, **extra}


def test_the_verdict_applies_the_issues_tolerances() -> None:
    close = real_tables.verdict(_result("ordinal", "regression", {"rmse": 101.9}, {"rmse": 100.0}))
    assert close["meets_metric"] and abs(close["vs"] - 1.019) < 1e-9
    assert not real_tables.verdict(_result("ordinal", "regression", {"rmse": 102.5}, {"rmse": 100.0}))["meets_metric"]
    worse = real_tables.verdict(_result("survival", "classification", {"log_loss": 0.45}, {"log_loss": 0.42}))
    assert not worse["meets_metric"] and abs(worse["vs"] - 0.03) < 1e-9
    # Evaluate without log loss: the score computed from predict's output is used, and the report says so.
    fallback = _result("survival", "classification", {"accuracy": 0.8}, {"log_loss": 0.42})
    fallback["comparison"]["tool_predict"] = {"log_loss": 0.43}
    assert real_tables.verdict(fallback)["tool_source"] == "predict on the test split"
    assert "evaluate stage reports no log_loss" in real_tables.markdown([fallback])


def test_the_flights_resource_targets_are_judged() -> None:
    steps = {"train": {"name": "train", "ok": True, "wall_s": 170.0, "peak_mb": 3500.0},
             "batch_predict": {"name": "batch_predict", "ok": True, "wall_s": 40.0, "peak_mb": 900.0}}
    result = _result("flights", "regression", {"rmse": 17.0}, {"rmse": 17.0}, steps=steps,
                     sizes_mb={"model_store": 12.0}, predict_rows=1_000_000)
    judged = real_tables.verdict(result)
    assert judged["meets_metric"] and judged["meets_store"] and judged["meets_predict"]
    assert judged["meets_train"] is False  # 3.5 GB > 3 GB
    report = real_tables.markdown([result])
    assert "model store <= 50 MB: met" in report and "MISSED" in report


def test_a_failed_step_is_listed_with_its_stage_and_message() -> None:
    result = {"table": "flights", "task": "regression", "rows": 336_776, "steps": {
        "init": {"name": "init", "ok": False, "wall_s": 4.2, "stage": "init", "message": "target has 9430 missing"}}}
    report = real_tables.markdown([result])
    assert "| flights | 336,776 | rmse | - | - | - |" in report
    assert "- flights: `init` failed in **init** after 4.2s: target has 9430 missing" in report
