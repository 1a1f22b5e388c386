"""Batch prediction's explanation columns (`python main.py predict --explain`): per row, the attribution of the
explained output to each input column, with the prediction server's explainer (serving/explain.py), so a file
explained here gets what `POST /explain` answers for the same rows.

Columns, after the prediction's:

- `contribution:<input column>`: one per input column of the model's feature contract, in its order; what the
  one-hot, date-derived and encoded columns made of it contribute, summed back to the column the file holds.
- `explain_base_value`: the explained output's base value (the model's mean output over its training data for a
  tree family; the intercept for a linear one).
- `explain_output`: the explained output for this row, `explain_base_value` + the sum of the contributions.
- `explain_class` (classification only): the class whose output is explained. For a model with one output per class
  (probabilities, multinomial log-odds) it is the predicted class; for a binary model explained in log-odds (one
  output) it is the positive class, whatever the prediction.

The output space (value, probability or log-odds) and, for a calibrated classifier, that the explained output is
its classifier's before calibration, are in the run's log and result (`explained`).

Memory: an explain call takes the encoded matrix and its attributions, one float per encoded column and output per
row, so a chunk is explained in calls of at most batch.encoded_mb / (encoded width x (outputs + 1) x 8 bytes) rows,
and never more than EXPLAIN_ROWS_MAX (a row costs the tree families' TreeSHAP far more time than memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from include.ml.exceptions import BatchPredictionError
from serving.explain import Explainer, ExplainError, build_explainer
from serving.model import LoadedModel

log = logging.getLogger(__name__)

CONTRIBUTION_PREFIX = "contribution:"
BASE_COLUMN, OUTPUT_COLUMN, CLASS_COLUMN = "explain_base_value", "explain_output", "explain_class"
EXPLAIN_ROWS_MAX = 10_000  # rows per explain call at most, however narrow the model
_VALUE_BYTES = 8


def explain_rows(encoded_width: int, outputs: int, encoded_mb: int) -> int:
    """Rows per explain call: as many as keep the encoded matrix and its attributions (rows x encoded width x
    (outputs + 1) x 8 bytes) within `encoded_mb` MiB, at least one, at most EXPLAIN_ROWS_MAX."""
    per_row = max(encoded_width, 1) * (max(outputs, 1) + 1) * _VALUE_BYTES
    return int(min(EXPLAIN_ROWS_MAX, max(1, encoded_mb * 2**20 // per_row)))


def columns(inputs: tuple[str, ...] | list[str], classification: bool) -> list[str]:
    """The explanation columns of the output, in order."""
    return [*(CONTRIBUTION_PREFIX + name for name in inputs), BASE_COLUMN, OUTPUT_COLUMN,
            *([CLASS_COLUMN] if classification else [])]


def is_explain_column(name: str) -> bool:
    return name.startswith(CONTRIBUTION_PREFIX) or name in (BASE_COLUMN, OUTPUT_COLUMN, CLASS_COLUMN)


@dataclass
class BatchExplainer:
    """The model's explainer, explaining a chunk `rows` rows per call."""

    explainer: Explainer
    inputs: tuple[str, ...]
    classification: bool
    rows: int

    @classmethod
    def for_model(cls, model: LoadedModel, encoded_width: int, encoded_mb: int) -> BatchExplainer:
        """The explainer the prediction server builds for this bundle. Raises BatchPredictionError when the model
        cannot be explained."""
        try:
            explainer = build_explainer(model.estimator, model.contract)
        except ExplainError as exc:
            raise BatchPredictionError(f"--explain: {model.name} version {model.version} cannot be explained: "
                                       f"{exc}") from exc
        classification = model.contract.task == "classification"
        rows = explain_rows(encoded_width, len(explainer.classes) or 1, encoded_mb)
        log.info("predict: explaining with %s (%s%s), at most %d rows per explain call", explainer.method,
                 explainer.output, ", the classifier's before calibration" if explainer.calibrated else "", rows)
        return cls(explainer, explainer.inputs, classification, rows)

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in self.explainer.describe().items() if key != "available"}

    def columns(self) -> list[str]:
        return columns(self.inputs, self.classification)

    def explain(self, model_columns: dict[str, np.ndarray], labels: Any) -> dict[str, Any]:
        """The explanation columns of these rows (the columns the predictor was given), `labels` being their
        predictions (a classification's slice is chosen by them)."""
        count = len(next(iter(model_columns.values()))) if model_columns else 0
        labels = [str(v) for v in np.asarray(labels, dtype=object)] if self.classification else None
        bases, contributions = [], []
        for start in range(0, count, self.rows):
            part = {name: column[start:start + self.rows] for name, column in model_columns.items()}
            explained = self.explainer.explain(part)
            base, contribution = explained.for_class(labels[start:start + self.rows] if labels is not None
                                                     else None)
            bases.append(np.asarray(base, dtype=np.float64).reshape(-1))
            contributions.append(np.asarray(contribution, dtype=np.float64).reshape(-1, len(self.inputs)))
        base = np.concatenate(bases) if bases else np.empty(0)
        contribution = np.concatenate(contributions) if contributions else np.empty((0, len(self.inputs)))
        out: dict[str, Any] = {CONTRIBUTION_PREFIX + name: contribution[:, i] for i, name in enumerate(self.inputs)}
        out[BASE_COLUMN] = base
        out[OUTPUT_COLUMN] = base + contribution.sum(axis=1)
        if self.classification:
            out[CLASS_COLUMN] = self._explained_classes(labels or [])
        return out

    def _explained_classes(self, labels: list[str]) -> Any:
        import pandas as pd

        classes = self.explainer.classes
        explained = labels if len(classes) != 1 else [classes[0]] * len(labels)  # binary log-odds: the positive
        return pd.array(explained, dtype=pd.StringDtype())
