"""Each dtype and role becomes the model's inputs as documented, per family; the memory guard refuses a fit that
cannot fit, naming the columns and the fixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from include.ml.components.transformation import transform
from include.ml.entities import TransformationConfig
from include.ml.exceptions import ConfigError
from include.ml.params_file import SplitConfig
from include.ml.preprocessing import (
    build_preprocessor,
    check_memory,
    encoding_for,
    encodings,
    estimate_memory,
    native_columns,
)
from include.ml.schema_file import ColumnSpec, SchemaConfig
from tests.support.frames import mixed_dataset, mixed_schema


def category(values: int | None, encoding: str | None = None) -> ColumnSpec:
    allowed = tuple(f"v{i}" for i in range(values)) if values else None
    return ColumnSpec(name="c", dtype="category", allowed=allowed, encoding=encoding)


@pytest.mark.parametrize(("values", "family", "expected"), [
    (30, "random_forest", "onehot"), (31, "random_forest", "target"), (None, "elasticnet", "target"),
    (255, "hist_gradient_boosting", "native"), (256, "hist_gradient_boosting", "target"),
    (None, "hist_gradient_boosting", "target"),
])
def test_automatic_encoding_follows_cardinality_and_family(values: int | None, family: str, expected: str) -> None:
    assert encoding_for(category(values), family) == expected


def test_an_explicit_encoding_wins_and_native_falls_back_where_there_are_no_categorical_splits() -> None:
    assert encoding_for(category(3, "target"), "hist_gradient_boosting") == "target"
    assert encoding_for(category(3, "native"), "hist_gradient_boosting") == "native"
    assert encoding_for(category(3, "native"), "extra_trees") == "onehot"
    assert encoding_for(category(100, "native"), "elasticnet") == "target"


def test_every_dtype_becomes_its_documented_inputs_for_the_native_family() -> None:
    schema, data = mixed_schema("regression"), mixed_dataset("regression")
    x = data[[c.name for c in schema.features]]
    assert encodings(schema, "hist_gradient_boosting") == {
        "when": "datetime", "grade": "ordinal", "plate": "target", "kind": "native", "x1": "numeric"}
    pre = build_preprocessor(schema, "hist_gradient_boosting").fit(x, data["y"])
    names = list(pre.get_feature_names_out())
    assert names == ["kind", "x1", "when.year", "when.month", "when.day", "when.dayofweek", "when.hour", "grade",
                     "plate"]
    assert native_columns(schema, "hist_gradient_boosting") == [0]  # the native column comes first
    out = pre.transform(x)
    assert out[:, names.index("grade")].tolist() == x["grade"].map({"low": 0, "mid": 1, "high": 2}).tolist()
    assert out[:, names.index("when.hour")].tolist() == pd.to_datetime(x["when"]).dt.hour.tolist()
    assert np.isnan(out[:, names.index("x1")]).sum() == x["x1"].isna().sum()  # missing stays missing: HGB's own

    unseen = x.head(1).assign(grade="unheard of", kind=None, plate="P999", when=None)
    row = pre.transform(unseen)[0]
    assert np.isnan(row[[names.index("grade"), names.index("kind"), names.index("when.year")]]).all()
    assert row[names.index("plate")] == pytest.approx(data["y"].mean(), rel=0.05)  # an unseen value: the mean


def test_other_families_get_imputed_inputs_and_one_hot_columns() -> None:
    schema, data = mixed_schema("classification"), mixed_dataset("classification")
    x = data[[c.name for c in schema.features]]
    pre = build_preprocessor(schema, "elasticnet").fit(x, data["y"])
    out = pre.transform(x.assign(x1=np.nan, when=None))
    out = out.toarray() if scipy.sparse.issparse(out) else out
    assert not np.isnan(out).any()
    names = list(pre.get_feature_names_out())
    assert {"kind_p", "kind_q"} <= set(names)
    assert {"plate_a", "plate_b", "plate_c"} <= set(names)  # multiclass target encoding: one column per class
    assert native_columns(schema, "elasticnet") == []


def test_regression_target_encoding_is_one_column_even_for_whole_numbered_targets() -> None:
    """scikit-learn takes whole-numbered floats for class labels; the encoder is told the target is continuous."""
    schema, data = mixed_schema("regression"), mixed_dataset("regression")
    x = data[[c.name for c in schema.features]]
    pre = build_preprocessor(schema, "random_forest").fit(x, data["y"].round())
    assert [n for n in pre.get_feature_names_out() if n.startswith("plate")] == ["plate"]


def test_wide_one_hot_stays_sparse_for_families_that_take_it_and_dense_for_the_native_one() -> None:
    rows = 2000
    schema = SchemaConfig(task="regression", target="y", columns=(
        ColumnSpec(name="code", dtype="category", encoding="onehot"), ColumnSpec(name="y", dtype="float")))
    data = pd.DataFrame({"code": [f"c{i % 500}" for i in range(rows)], "y": np.arange(rows, dtype=float)})
    sparse = build_preprocessor(schema, "random_forest").fit_transform(data[["code"]], data["y"])
    dense = build_preprocessor(schema, "hist_gradient_boosting").fit_transform(data[["code"]], data["y"])
    assert scipy.sparse.issparse(sparse) and sparse.shape == (rows, 500)
    assert isinstance(dense, np.ndarray) and dense.shape == (rows, 500)
    assert estimate_memory(schema, "random_forest", data).sparse and not \
        estimate_memory(schema, "hist_gradient_boosting", data).sparse


def test_one_hot_caps_rare_values_into_one_column() -> None:
    schema = SchemaConfig(task="regression", target="y", columns=(
        ColumnSpec(name="code", dtype="category", encoding="onehot", max_categories=5),
        ColumnSpec(name="y", dtype="float")))
    data = pd.DataFrame({"code": [f"c{i % 50}" for i in range(1000)], "y": 1.0})
    pre = build_preprocessor(schema, "random_forest").fit(data[["code"]], data["y"])
    assert len(pre.get_feature_names_out()) == 5
    assert estimate_memory(schema, "random_forest", data).width == 5
    assert pre.transform(pd.DataFrame({"code": ["never seen"]})).sum() == 1  # the infrequent column


def wide_table(rows: int) -> tuple[SchemaConfig, pd.DataFrame]:
    """A table whose one id-like text column, one-hot encoded densely, is rows x rows doubles."""
    schema = SchemaConfig(task="regression", target="y", columns=(
        ColumnSpec(name="plate", dtype="category", encoding="onehot"), ColumnSpec(name="x", dtype="float"),
        ColumnSpec(name="y", dtype="float")))
    frame = pd.DataFrame({"plate": [f"N{i:06d}" for i in range(rows)], "x": np.zeros(rows), "y": np.zeros(rows)})
    return schema, frame


def test_the_estimate_is_of_the_matrix_the_fit_really_gets() -> None:
    schema, frame = wide_table(1500)
    encoded = build_preprocessor(schema, "hist_gradient_boosting").fit_transform(frame[["plate", "x"]], frame["y"])
    estimate = estimate_memory(schema, "hist_gradient_boosting", frame)
    assert estimate.width == encoded.shape[1] == 1501
    assert estimate.bytes >= 3 * encoded.nbytes


def test_a_fit_larger_than_the_machine_fails_at_transform_naming_the_column(tmp_path: Path) -> None:
    """80,000 rows x 80,000 one-hot columns as doubles is 48 GiB: more than this machine has, refused before any
    fitting, with the column, its width and the fixes."""
    schema, frame = wide_table(100_000)
    config = TransformationConfig(schema, SplitConfig(), ("hist_gradient_boosting",), "/cfg/schema.yaml")
    with pytest.raises(ConfigError) as refused:
        transform(frame, config, tmp_path)
    error = refused.value
    assert (error.file, error.key) == ("/cfg/schema.yaml", "columns.plate.encoding")
    assert "not enough memory to fit hist_gradient_boosting on 80,000 rows x 80,001 encoded columns" in error.problem
    assert "plate (onehot, 80,000 columns)" in error.problem and "encoding: target" in error.problem
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_guard_weighs_each_family_it_will_fit() -> None:
    """3000 x 3001 doubles, three times, is ~206 MiB dense (hist_gradient_boosting); sparse (the forest) a few."""
    schema, frame = wide_table(3000)
    budget = 200 * 2**20  # a fit may plan for 80 % of it: 160 MiB
    (forest,) = check_memory(schema, ("random_forest",), frame, "schema.yaml", available=budget)
    assert forest.sparse and forest.bytes < 2**20
    with pytest.raises(ConfigError, match="hist_gradient_boosting on 3,000 rows"):
        check_memory(schema, ("random_forest", "hist_gradient_boosting"), frame, "schema.yaml", available=budget)
