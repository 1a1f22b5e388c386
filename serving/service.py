"""What the request handlers of one worker share: the settings, the served model, the batcher, the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.batching import MicroBatcher, StaleContract
from serving.capture import CaptureWriter
from serving.contract import Contract
from serving.inputs import Batch, validate
from serving.limits import Limits, request_limits
from serving.metrics import Metrics
from serving.model import LoadedModel, ModelHolder, Prediction
from serving.settings import Settings


class NoModel(Exception):
    """No model has been loaded yet (answered 503)."""


@dataclass
class Service:
    """What the request handlers share within one worker."""

    settings: Settings
    holder: ModelHolder
    metrics: Metrics
    batcher: MicroBatcher | None
    capture: CaptureWriter | None = None

    def model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            raise NoModel()
        return model

    def limits(self, contract: Contract) -> Limits:
        """How large a request may be for a model of this contract (serving/limits.py)."""
        settings = self.settings
        return request_limits(settings.max_rows, settings.max_columns, settings.max_values, len(contract.accepted))

    def predict(self, records: Any, from_text: bool = False) -> tuple[LoadedModel, Batch, Prediction]:
        """Validate against the served model's contract, then predict (batched with others when small)."""
        for _ in range(3):  # a swap to a model with other inputs between the two steps: validate again
            model = self.model()
            batch = validate(records, model.contract, max_rows=self.settings.max_rows,
                             out_of_range=self.settings.out_of_range, from_text=from_text,
                             max_columns=self.limits(model.contract).columns)
            # Batching pays for scikit-learn's milliseconds per call; ONNX Runtime takes ~20 µs for a row, less than
            # the hand-off to the batcher thread (docs/benchmarks.md), so a compiled model predicts in place.
            if self.batcher is not None and batch.n_rows < self.settings.batch_max_rows and model.compiled is None:
                try:
                    model, prediction = self.batcher.predict(batch)
                except StaleContract:
                    continue
            else:
                prediction = model.predict(batch.columns, batch.numeric)
                self.metrics.batch_rows.observe(batch.n_rows)
            self.metrics.predicted(model.name, model.version, batch.n_rows)
            return model, batch, prediction
        raise NoModel()

    def record(self, request_id: str, model: LoadedModel, batch: Batch, prediction: Prediction) -> None:
        """Hand a prediction to the capture writer (when capture is on); never blocks, never raises."""
        if self.capture is not None:
            self.capture.submit(request_id, model.name, model.version, batch.columns, batch.n_rows,
                                prediction.values, prediction.probabilities, batch.keys)

    def close(self) -> None:
        self.holder.stop()
        if self.capture is not None:
            self.capture.close()
