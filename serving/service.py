"""What the request handlers of one worker share: the settings, the served model, the batcher, the metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from serving.batching import MicroBatcher, StaleContract
from serving.body import InputError
from serving.capture import CaptureWriter
from serving.contract import Contract
from serving.inputs import Batch, validate
from serving.limits import Limits, request_limits
from serving.metrics import Metrics
from serving.model import LoadedModel, ModelHolder, Prediction
from serving.release import CANARY, CANDIDATE, CHAMPION, Job, Scored, Scorer, candidate_answer, in_share
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
    scorer: Scorer | None = None  # scores the other model of a release's paired requests (serving/release.py)

    def model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            raise NoModel()
        return model

    def limits(self, contract: Contract) -> Limits:
        """How large a request may be for a model of this contract (serving/limits.py)."""
        settings = self.settings
        return request_limits(settings.max_rows, settings.max_columns, settings.max_values, len(contract.accepted))

    def validate(self, records: Any, contract: Contract, from_text: bool = False) -> Batch:
        """The request's rows checked against `contract` (with the request limits of a model of that contract)."""
        return validate(records, contract, max_rows=self.settings.max_rows, out_of_range=self.settings.out_of_range,
                        from_text=from_text, max_columns=self.limits(contract).columns)

    def predict(self, records: Any, from_text: bool = False) -> tuple[LoadedModel, Batch, Prediction]:
        """Validate against the served model's contract, then predict (batched with others when small)."""
        answered = self._predict(records, from_text)
        return answered.model, answered.batch, answered.prediction

    def _predict(self, records: Any, from_text: bool) -> Scored:
        """The champion's answer, with the seconds its model call took."""
        for _ in range(3):  # a swap to a model with other inputs between the two steps: validate again
            model = self.model()
            batch = self.validate(records, model.contract, from_text)
            started = time.perf_counter()
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
            seconds = time.perf_counter() - started
            self.metrics.predicted(model.name, model.version, batch.n_rows)
            return Scored(model, batch, prediction, seconds)
        raise NoModel()

    def serve(self, records: Any, request_id: str, key: str, from_text: bool = False) -> Scored:
        """Answer a prediction request and capture it: by the champion, or during a release by the model the
        request's routing `key` picks, with the other model scoring the same rows off the request path. During a
        release every model call is counted by role (serving_release_*), so the gate compares like with like; a
        paired request's calls are counted by the scorer thread, with its round."""
        release = self.holder.release
        if release is None or self.scorer is None:
            answered = self._predict(records, from_text)
            self.record(request_id, answered.model, answered.batch, answered.prediction)
            return answered
        paired, refused, answered = in_share(key, release.share), None, None
        if paired and release.mode == CANARY:
            answered, refused = candidate_answer(release.candidate, records, from_text, self.validate,
                                                 self.metrics.release)
        if answered is not None:
            self.metrics.predicted(answered.model.name, answered.model.version, answered.batch.n_rows)
            self.scorer.submit(Job(request_id, records, from_text, answered, CANDIDATE, self.model()))
            return answered
        answered = self._champion(records, from_text)
        if refused == "input":  # the champion takes rows the candidate's contract refuses
            self.metrics.release.error(CANDIDATE, "input")
        if paired and refused is None:
            self.scorer.submit(Job(request_id, records, from_text, answered, CHAMPION, release.candidate))
            return answered
        # outside the share, or the candidate failed it: the champion's answer alone
        self.metrics.release.ok(CHAMPION, answered.seconds)
        self.record(request_id, answered.model, answered.batch, answered.prediction)
        return answered

    def _champion(self, records: Any, from_text: bool) -> Scored:
        """The champion's answer during a release; a failed call is counted under role champion."""
        try:
            return self._predict(records, from_text)
        except InputError:
            raise  # the client's mistake: no model's call
        except Exception:
            self.metrics.release.error(CHAMPION, "exception")
            raise

    def record(self, request_id: str, model: LoadedModel, batch: Batch, prediction: Prediction,
               served_by: str = CHAMPION) -> None:
        """Hand a prediction to the capture writer (when capture is on); never blocks, never raises."""
        if self.capture is not None:
            self.capture.submit(request_id, model.name, model.version, batch.columns, batch.n_rows,
                                prediction.values, prediction.probabilities, batch.keys, served_by=served_by)

    def close(self) -> None:
        self.holder.stop()
        if self.scorer is not None:
            self.scorer.close()  # its pairs go to capture, which closes after
        if self.capture is not None:
            self.capture.close()
