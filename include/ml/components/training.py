"""Training: fit preprocessing + estimator as one sklearn Pipeline and log it to MLflow."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml import artifacts, tracking
from include.ml.entities import TrainingConfig
from include.ml.exceptions import TrainingError
from include.ml.models import CALIBRATION_SKOPS_TYPES, FAMILIES
from include.ml.preprocessing import PREPROCESSING_SKOPS_TYPES, build_preprocessor, check_memory, native_columns
from include.ml.schema_file import SchemaConfig
from include.ml.training_inputs import TrainingInputs
from serving.trust import ALLOWED_SKOPS_TYPES

log = logging.getLogger(__name__)

RESULT = "result.json"
MODEL_NAME = "model"
SCHEMA_SAMPLE_ROWS = 1000
CALIBRATION_FOLDS = 5  # scikit-learn's default


@dataclass(frozen=True)
class TrainingResult:
    mlflow_run_id: str
    mlflow_run_url: str  # the run's page in the MLflow UI
    experiment_id: str
    model_uri: str
    family: str
    estimator: str
    train_rows: int
    fit_seconds: float
    skops_trusted_types: list[str]
    calibration: str = "none"  # model.calibration: the estimator wrapped in CalibratedClassifierCV unless none

    def summary(self) -> str:
        calibrated = "" if self.calibration == "none" else f" ({self.calibration} calibration)"
        return (f"{self.estimator}{calibrated} fitted on {self.train_rows} rows in {self.fit_seconds:.1f}s; "
                f"MLflow run {self.mlflow_run_id}")

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links mlflow_run_url
        return {"mlflow_run_id": self.mlflow_run_id, "mlflow_run_url": self.mlflow_run_url,
                "model_uri": self.model_uri, "family": self.family, "estimator": self.estimator,
                "calibration": self.calibration, "train_rows": self.train_rows, "fit_seconds": self.fit_seconds}


def build_pipeline(config: TrainingConfig) -> Any:
    """preprocess + the family's estimator; with calibration, the "model" step is the estimator inside a
    CalibratedClassifierCV (CALIBRATION_FOLDS-fold, on whatever it is fitted on: the training split, a tuning
    fold)."""
    from sklearn.pipeline import Pipeline

    model = config.model
    hyperparameters = dict(model.hyperparameters)
    if categorical := native_columns(config.schema, model.family):
        hyperparameters["categorical_features"] = categorical
    estimator = FAMILIES[model.family].build(config.schema.task, model.random_state, hyperparameters)
    if config.calibration != "none":
        if config.schema.task != "classification":
            raise TrainingError(f"calibration {config.calibration!r} applies to classifiers; the task is "
                                f"{config.schema.task}")
        estimator = calibrated(estimator, config.calibration)
    return Pipeline([("preprocess", build_preprocessor(config.schema, model.family, model.random_state)),
                     ("model", estimator)])


def calibrated(estimator: Any, method: str) -> Any:
    """`estimator` calibrated by `method` (sigmoid, isotonic), cross-fitted: the calibrator learns from the
    out-of-fold probabilities (or decision function) of CALIBRATION_FOLDS stratified folds, then the estimator is
    refitted on all the rows (ensemble=False: one model to store and serve, not one per fold)."""
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(estimator, method=method, cv=CALIBRATION_FOLDS, ensemble=False)


def estimator_of(step: Any) -> Any:
    """The family's estimator in a pipeline's "model" step: the step itself, or the one its calibration wraps
    (unfitted: its parameters are the fitted one's)."""
    from sklearn.calibration import CalibratedClassifierCV

    return step.estimator if isinstance(step, CalibratedClassifierCV) else step


def skops_trusted_types(pipeline: Any, family: str) -> list[str]:
    """The exact types outside skops' defaults this fitted pipeline holds; refuse any the family doesn't expect
    (with calibration, the family's and the calibration's)."""
    import skops.io

    needed = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))
    expected = set(FAMILIES[family].skops_trusted_types) | set(PREPROCESSING_SKOPS_TYPES)
    model = pipeline.named_steps["model"] if hasattr(pipeline, "named_steps") else pipeline
    if estimator_of(model) is not model:
        expected |= set(CALIBRATION_SKOPS_TYPES)
    unexpected = sorted(set(needed) - expected)
    if unexpected:
        raise TrainingError(f"the fitted {family} pipeline holds types not on its skops allow-list: {unexpected}; "
                            "review them and add them to include/ml/models.py if they are safe")
    unservable = sorted(set(needed) - ALLOWED_SKOPS_TYPES)
    if unservable:  # what trains must load on every prediction server
        raise TrainingError(f"the fitted {family} pipeline holds types the prediction server refuses to load: "
                            f"{unservable}; they must be in serving/trust.py too")
    return needed


def training_dataset(frame: pd.DataFrame, source: str) -> Any:
    """The training rows as MLflow records them: where they came from, a digest of every row, and the schema of a
    sample. (mlflow.data.from_pandas infers its schema value by value over the whole frame: 17 s for 260k rows.)"""
    import hashlib

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.models import infer_signature

    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:12]
    schema = infer_signature(frame.head(SCHEMA_SAMPLE_ROWS)).inputs
    return MetaDataset(resolve_dataset_source(source), name="train", digest=digest, schema=schema)


def model_requirements() -> list[str]:
    """What loading the model needs, pinned as installed. Given, not inferred: MLflow's inference re-imports the model
    in a child process (~9 s a training), and servers install serving/requirements.txt anyway."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]


def split_xy(frame: pd.DataFrame, schema: SchemaConfig) -> tuple[pd.DataFrame, pd.Series]:
    return frame[[c.name for c in schema.features]], frame[schema.target]


def train(train_frame: pd.DataFrame, config: TrainingConfig, run_id: str, output_dir: Path,
          dataset_source: str, inputs: TrainingInputs | None = None) -> TrainingResult:
    """Fit and log the model; `inputs` (what it was trained from: snapshot, GX summary, commit, requirements) are
    recorded as the run's provenance.* tags, which export signs into the bundle's provenance statement."""
    import mlflow
    from mlflow.models import infer_signature

    experiment_id = tracking.configure(config.mlflow)
    close_abandoned_runs(experiment_id, run_id, "train")
    x, y = split_xy(train_frame, config.schema)
    (planned,) = check_memory(config.schema, (config.model.family,), train_frame, config.schema_file)
    pipeline = build_pipeline(config)
    model = estimator_of(pipeline.named_steps["model"])
    estimator = type(model).__name__
    with warnings.catch_warnings(), \
            mlflow.start_run(experiment_id=experiment_id, run_name=f"{config.model.family}-{run_id}") as run:
        # Int columns in the schema are non-nullable (nullable ones are read as float), and a
        # local path is a fine dataset source: both MLflow hints are noise here.
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
        warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in multiple ways")
        mlflow.set_tags({**config.tags, "pipeline_run_id": run_id, "pipeline_stage": "train",
                         "model_family": config.model.family,
                         "task": config.schema.task, "estimator": estimator, "calibration": config.calibration})
        mlflow.log_params({"family": config.model.family, "random_state": config.model.random_state,
                           "train_rows": len(x), "calibration": config.calibration,
                           **{f"model.{k}": v for k, v in model.get_params().items()}})
        if inputs is not None:
            mlflow.set_tags(inputs.tags())
        mlflow.log_input(training_dataset(train_frame, dataset_source), context="training")
        started = time.perf_counter()
        try:
            pipeline.fit(x, y)
        except (ValueError, TypeError) as exc:
            raise TrainingError(f"{estimator} could not be fitted: {exc}") from exc
        except MemoryError as exc:  # the guard's estimate was too low: say so, never a bare MemoryError
            raise TrainingError(f"{estimator} ran out of memory while fitting ({planned.describe()} was estimated): "
                                "reduce the encoded width (encoding: target, max_categories, role: ignore) or the "
                                "rows") from exc
        fit_seconds = time.perf_counter() - started
        mlflow.log_metric("fit_seconds", fit_seconds)
        trusted = skops_trusted_types(pipeline, config.model.family)
        example = x.head(5)
        info = mlflow.sklearn.log_model(
            pipeline, name=MODEL_NAME, serialization_format="skops", skops_trusted_types=trusted,
            pip_requirements=model_requirements(),
            signature=infer_signature(example, pipeline.predict(example)), input_example=example,
            metadata={"feature_contract": config.schema.feature_contract()})
        mlflow.set_tag("model_uri", info.model_uri)
    run_url = tracking.run_url(config.mlflow, experiment_id, run.info.run_id)
    result = TrainingResult(run.info.run_id, run_url, experiment_id, info.model_uri, config.model.family, estimator,
                            len(x), round(fit_seconds, 3), trusted, config.calibration)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("train: %s", result.summary())
    return result


def close_abandoned_runs(experiment_id: str, run_id: str, stage: str) -> None:
    """Mark runs a killed attempt of this stage of this pipeline run left RUNNING as failed, so only one looks
    alive."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for stale in client.search_runs([experiment_id], f"tags.pipeline_run_id = '{run_id}' and "
                                    f"tags.pipeline_stage = '{stage}' and attributes.status = 'RUNNING'"):
        log.warning("marking MLflow run %s of an earlier, interrupted attempt as FAILED", stale.info.run_id)
        client.set_terminated(stale.info.run_id, status="FAILED")
