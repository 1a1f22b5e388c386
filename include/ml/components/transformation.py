"""Transformation: a seeded split and the preprocessing that becomes part of the model."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml import artifacts
from include.ml.entities import TransformationConfig
from include.ml.exceptions import PipelineError
from include.ml.preprocessing import build_preprocessor, check_memory, encodings

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
    encodings: dict[str, str]  # feature -> numeric | datetime | ordinal | onehot | target | native (model.family's)
    encoded_features: int
    memory: list[str]  # the memory guard's estimate for each family that will be fitted
    target_distribution: dict[str, Any]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for how in self.encodings.values():
            counts[how] = counts.get(how, 0) + 1
        kinds = ", ".join(f"{n} {how}" for how, n in counts.items())
        return (f"{self.train_rows} train / {self.test_rows} test rows; {len(self.encodings)} features ({kinds}) -> "
                f"{self.encoded_features} model inputs")

    def xcom(self) -> dict[str, Any]:
        return {"train_path": self.train_path, "test_path": self.test_path, "train_rows": self.train_rows,
                "test_rows": self.test_rows}


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
    """Split the rows, check every family to be fitted fits in memory, and check the preprocessing works on them."""
    schema = config.schema
    train, test = split(frame, config)
    x, y = train[[c.name for c in schema.features]], train[schema.target]
    estimates = check_memory(schema, config.families, train, config.schema_file)
    for estimate in estimates:
        log.info("transform: memory guard: %s", estimate.describe())
    # Fitting here only checks the preprocessing works on this data; training refits it inside the model.
    family = config.families[0]
    encoded = build_preprocessor(schema, family, config.split.random_state).fit(x, y).get_feature_names_out()
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
        encodings(schema, family), len(encoded), [e.describe() for e in estimates], distribution)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("transform: %s", result.summary())
    return result
