"""Errors the pipeline raises. Each carries the details a user needs to fix the cause."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PipelineError(Exception):
    """Base class: a stage could not produce its result."""


class ConfigError(PipelineError):
    """A configuration file is missing, malformed or inconsistent."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class IngestionError(PipelineError):
    """The data source could not be read or parsed."""


class SourceTooLargeError(IngestionError):
    """The source, or the CSV inside its zip archive, breaks one of data_source's size caps; nothing was written."""

    def __init__(self, source: str, setting: str, limit: float, found: str) -> None:
        self.source, self.setting, self.limit, self.found = source, setting, limit, found
        super().__init__(f"source {source} refused: {found}, over data_source.{setting} = {limit:,}; "
                         "nothing was written")


class ChampionGateError(PipelineError):
    """The gate cannot weigh the challenger against the champion, so the champion alias does not move; only a
    forced promotion overrides this. `problem` completes "forced promotion over ..." in the gate's reason."""

    def __init__(self, champion_version: str, problem: str, challenger: str = "the challenger",
                 hint: str = "") -> None:
        self.champion_version, self.problem = champion_version, problem
        super().__init__(f"{challenger} was not promoted over {problem}. The champion alias stays on "
                         f"v{champion_version}; rerun with --force-promote (trigger form: force_promote) to replace "
                         f"it anyway{hint}")


class IncompatibleChampionError(ChampionGateError):
    """The champion was trained for another task, target or feature set (names, dtypes) than the challenger."""

    def __init__(self, champion_version: str, differences: list[str], challenger: str = "the challenger") -> None:
        self.differences = differences
        super().__init__(champion_version, f"an incompatible champion v{champion_version}: {'; '.join(differences)}",
                         challenger, ", or give a different dataset or task its own mlflow.registered_model_name")


class UnscorableChampionError(ChampionGateError):
    """The champion could not be scored on this test set for another reason (it would not load or predict)."""

    def __init__(self, champion_version: str, cause: str, challenger: str = "the challenger") -> None:
        self.cause = cause
        super().__init__(champion_version, f"champion v{champion_version}, which could not be scored on this "
                         f"test set ({cause})", challenger)


class DataValidationError(PipelineError):
    """The data broke the expectations generated from schema.yaml."""

    def __init__(self, failures: list[dict[str, Any]], data_docs: str | None) -> None:
        self.failures, self.data_docs = failures, data_docs
        lines = [f"data validation failed: {len(failures)} expectation(s) not met"]
        lines += [f"  - {format_failure(f)}" for f in failures]
        if data_docs:
            lines.append(f"  Data Docs: {data_docs}")
        super().__init__("\n".join(lines))


class BatchPredictionError(PipelineError):
    """A batch prediction's input cannot be scored or its output cannot be written; no output was left."""


class TrainingError(PipelineError):
    """The model could not be trained or logged."""


class TuningError(PipelineError):
    """The hyperparameter search found no configuration: every trial failed or was pruned."""


class DeploymentError(PipelineError):
    """A rollout stopped; every server was returned to the version it served before."""


class RollbackError(PipelineError):
    """The requested version cannot become the champion (it does not exist, or there is no previous one)."""


class MonitoringError(PipelineError):
    """The monitor's inputs are unusable: a missing or empty file, columns that differ, a value of the wrong type."""


class StageInputError(PipelineError):
    """A stage's inputs from an earlier stage are missing."""


def format_failure(failure: dict[str, Any]) -> str:
    """One readable line for a failed expectation."""
    column = failure.get("column") or "<table>"
    text = f"{column}: {failure['expectation']}"
    if failure.get("expected"):
        text += f" (expected {failure['expected']})"
    if failure.get("observed") is not None:
        text += f"; observed {failure['observed']}"
    if failure.get("unexpected_count"):
        text += (f"; {failure['unexpected_count']} bad value(s) ({failure['unexpected_percent']:.1f}%), "
                 f"e.g. {failure['examples']}")
        if failure.get("rows"):
            text += f" in rows {failure['rows']}"
    if failure.get("error"):
        text += f"; {failure['error']}"
    return text


class DraftError(PipelineError):
    """The data cannot be drafted into a valid configuration."""


class OutputExistsError(DraftError):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        super().__init__(f"refusing to overwrite {', '.join(map(str, paths))}: remove them or choose another directory")


class UnknownTargetError(DraftError):
    def __init__(self, target: str, columns: list[str]) -> None:
        self.target, self.columns = target, columns
        super().__init__(f"target {target!r} is not a column of the data; its columns: {', '.join(map(repr, columns))}")


class RareClassError(DraftError):
    def __init__(self, target: str, counts: dict[Any, int]) -> None:
        self.target, self.counts = target, counts
        super().__init__(f"classification target {target!r} has classes seen only once: {sorted(counts, key=str)}; "
                         "the split is stratified and needs every class at least twice: drop or merge those rows")
