"""Transformation: a seeded split and the preprocessing that becomes part of the model."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml import artifacts
from include.ml.entities import SchemaConfig, TransformationConfig
from include.ml.exceptions import PipelineError

log = logging.getLogger(__name__)

TRAIN = "train.parquet"
TEST = "test.parquet"
RESULT = "result.json"


@dataclass(frozen=True)
class TransformationResult:
    train_path: str
    test_path: str
    train_rows: int
    test_rows: int
    numeric_features: list[str]
    categorical_features: list[str]
    encoded_features: int
    target_distribution: dict[str, Any]

    def summary(self) -> str:
        return (f"{self.train_rows} train / {self.test_rows} test rows; {len(self.numeric_features)} numeric + "
                f"{len(self.categorical_features)} categorical features -> {self.encoded_features} model inputs")

    def xcom(self) -> dict[str, Any]:
        return {"train_path": self.train_path, "test_path": self.test_path, "train_rows": self.train_rows,
                "test_rows": self.test_rows}


def build_preprocessor(schema: SchemaConfig) -> Any:
    """Impute and scale numeric features, impute and one-hot encode categorical ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="most_frequent")),
        # Categories unseen in training are encoded as all zeros instead of failing at serving time.
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
    ])
    return ColumnTransformer(
        [("numeric", numeric, schema.numeric_features), ("categorical", categorical, schema.categorical_features)],
        remainder="drop", verbose_feature_names_out=False)


def split(frame: pd.DataFrame, config: TransformationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic for a given frame and seed; stratified on the target for classification."""
    from sklearn.model_selection import train_test_split

    target = config.schema.target
    stratify = None
    if config.schema.task == "classification":
        counts = frame[target].value_counts()
        rare = counts[counts < 2]
        if not rare.empty:
            raise PipelineError(f"cannot stratify the split: class(es) {list(rare.index)} of target {target!r} "
                                "have fewer than 2 rows")
        stratify = frame[target]
    train, test = train_test_split(frame, test_size=config.split.test_size,
                                   random_state=config.split.random_state, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def transform(frame: pd.DataFrame, config: TransformationConfig, output_dir: Path) -> TransformationResult:
    schema = config.schema
    train, test = split(frame, config)
    # Fitting here only checks the preprocessing works on this data; training refits it inside the model.
    encoded = build_preprocessor(schema).fit(train.drop(columns=[schema.target])).get_feature_names_out()
    for name, part in ((TRAIN, train), (TEST, test)):
        with artifacts.atomic_path(output_dir / name) as tmp:
            part.to_parquet(tmp, index=False)
    target = train[schema.target]
    distribution = ({str(k): int(v) for k, v in target.value_counts().sort_index().items()}
                    if schema.task == "classification"
                    else {"mean": float(target.mean()), "std": float(target.std()),
                          "min": float(target.min()), "max": float(target.max())})
    result = TransformationResult(
        str(output_dir / TRAIN), str(output_dir / TEST), len(train), len(test),
        schema.numeric_features, schema.categorical_features, len(encoded), distribution)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("transform: %s", result.summary())
    return result
