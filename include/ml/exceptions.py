"""Errors the pipeline raises. Each carries the details a user needs to fix the cause."""

from __future__ import annotations

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


class DataValidationError(PipelineError):
    """The data broke the expectations generated from schema.yaml."""

    def __init__(self, failures: list[dict[str, Any]], data_docs: str | None) -> None:
        self.failures, self.data_docs = failures, data_docs
        lines = [f"data validation failed: {len(failures)} expectation(s) not met"]
        lines += [f"  - {format_failure(f)}" for f in failures]
        if data_docs:
            lines.append(f"  Data Docs: {data_docs}")
        super().__init__("\n".join(lines))


class TrainingError(PipelineError):
    """The model could not be trained or logged."""


class DeploymentError(PipelineError):
    """A rollout stopped; every server was returned to the version it served before."""


class RollbackError(PipelineError):
    """The requested version cannot become the champion (it does not exist, or there is no previous one)."""


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
    if failure.get("error"):
        text += f"; {failure['error']}"
    return text
