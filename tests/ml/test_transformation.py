"""The split is seeded and stratified; preprocessing handles missing values and unseen categories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.ml.components.transformation import split, transform
from include.ml.entities import TransformationConfig
from include.ml.exceptions import PipelineError
from include.ml.params_file import SplitConfig
from include.ml.preprocessing import build_preprocessor
from include.ml.schema_file import ColumnSpec, SchemaConfig

SCHEMA = SchemaConfig(task="classification", target="label", min_rows=1, columns=(
    ColumnSpec(name="size", dtype="float", nullable=True),
    ColumnSpec(name="colour", dtype="category", nullable=True, allowed=("red", "blue")),
    ColumnSpec(name="label", dtype="category", allowed=("a", "b")),
))


def frame(rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    size = rng.normal(5, 2, rows)
    size[::7] = np.nan
    colour = rng.choice(["red", "blue"], rows).astype(object)
    colour[::5] = None
    return pd.DataFrame({"size": size, "colour": colour, "label": ["a"] * (rows // 5) + ["b"] * (rows - rows // 5)})


def config(seed: int = 1) -> TransformationConfig:
    return TransformationConfig(SCHEMA, SplitConfig(test_size=0.25, random_state=seed))


def test_split_is_deterministic_and_seed_dependent() -> None:
    first, second, other = split(frame(), config()), split(frame(), config()), split(frame(), config(seed=2))
    pd.testing.assert_frame_equal(first[0], second[0])
    assert not first[0].equals(other[0])


def test_split_is_stratified() -> None:
    train, test = split(frame(), config())
    assert len(test) == 10
    assert (test["label"] == "a").sum() == 2 and (train["label"] == "a").sum() == 6  # 20% each


def test_a_class_with_one_row_cannot_be_stratified() -> None:
    data = frame()
    data.loc[0, "label"] = "c"
    with pytest.raises(PipelineError, match=r"class\(es\) \['c'\] of target 'label' have fewer than 2 rows"):
        split(data, config())


def test_preprocessor_imputes_scales_and_ignores_unseen_categories() -> None:
    features = frame().drop(columns=["label"])
    pre = build_preprocessor(SCHEMA, "elasticnet").fit(features)
    assert list(pre.get_feature_names_out()) == ["size", "colour_blue", "colour_red"]
    out = pre.transform(pd.DataFrame({"size": [np.nan], "colour": ["green"]}))
    assert not np.isnan(out).any()
    assert out[0, 1:].tolist() == [0.0, 0.0]  # unseen category: all zeros, no error
    scaled = pre.transform(features)[:, 0]
    assert scaled.mean() == pytest.approx(0, abs=0.2)


def test_transform_writes_splits(tmp_path: Path) -> None:
    result = transform(frame(), config(), tmp_path)
    assert (result.train_rows, result.test_rows, result.encoded_features) == (30, 10, 3)
    assert result.target_distribution == {"a": 6, "b": 24}
    assert len(pd.read_parquet(result.train_path)) == 30 and len(pd.read_parquet(result.test_path)) == 10
