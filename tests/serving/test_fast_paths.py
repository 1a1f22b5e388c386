"""The forest fast path in serving.model answers exactly as sklearn does, and steps aside when it would not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving import model as model_mod
from serving.inputs import validate
from serving.model import load_bundle
from tests.support.bundles import toy_frame
from tests.support.signing import trusted_keys


def _final(model: model_mod.LoadedModel):
    return model.estimator.steps[-1][1]


# Both ways of the forest fast path: all trees walked at once (up to VECTOR_MAX_ROWS) and tree by tree.
@pytest.mark.parametrize("rows", [1, 7, model_mod._SummedTrees.VECTOR_MAX_ROWS,
                                  model_mod._SummedTrees.VECTOR_MAX_ROWS + 1, 300])
def test_regression_forest_sums_trees_directly_with_identical_results(bundles: Path, rows: int) -> None:
    model = load_bundle(bundles / "1", trusted_keys())
    final = _final(model)
    assert isinstance(vars(final).get("predict"), model_mod._SummedTrees)
    frame = toy_frame("regression", rows=rows, seed=7).drop(columns="y")  # NaN in x1: imputed before the forest
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
               for row in frame.to_dict("records")]
    batch = validate(records, model.contract, max_rows=1000)
    fast = np.array(model.predict(batch.columns).values)
    del final.predict
    slow = np.array(model.predict(batch.columns).values)
    assert np.array_equal(fast, slow)  # bit-identical, not approximately equal


def test_unusual_input_goes_to_sklearn(bundles: Path) -> None:
    final = _final(load_bundle(bundles / "1", trusted_keys()))
    fast = vars(final)["predict"]
    x = np.full((2, final.n_features_in_), np.nan)  # non-finite: sklearn decides (forests may route NaN)
    assert np.array_equal(fast(x), type(final).predict(final, x))
    with pytest.raises(ValueError, match="features"):  # the wrong width: sklearn's own error
        fast(np.zeros((1, final.n_features_in_ + 1)))


def test_classifier_is_left_alone(bundles: Path) -> None:
    assert "predict" not in vars(_final(load_bundle(bundles / "c1", trusted_keys())))


@pytest.mark.parametrize("way", ["_walk_all", "_tree_by_tree"])
def test_a_fast_path_that_disagrees_is_dropped(bundles: Path, monkeypatch: pytest.MonkeyPatch, way: str) -> None:
    original = getattr(model_mod._SummedTrees, way)
    monkeypatch.setattr(model_mod._SummedTrees, way, lambda self, x: original(self, x) + 1e-9)
    model = load_bundle(bundles / "1", trusted_keys())
    assert "predict" not in vars(_final(model))


def _numeric_preprocessor(categorical: bool = False):
    from include.ml.components.transformation import build_preprocessor
    from include.ml.entities import ColumnSpec, SchemaConfig

    columns = (ColumnSpec(name="a", dtype="float", nullable=True, min=-10, max=10),
               ColumnSpec(name="b", dtype="int", min=0, max=100),
               *((ColumnSpec(name="kind", dtype="category", allowed=("p", "q")),) if categorical else ()),
               ColumnSpec(name="y", dtype="float"))
    frame = toy_frame("regression", rows=200, seed=3).rename(columns={"x1": "a", "count": "b"})
    frame["b"] = frame["b"].astype(float)
    ct = build_preprocessor(SchemaConfig(task="regression", target="y", min_rows=1, columns=columns))
    ct.fit(frame.drop(columns="y"))
    return ct, frame.drop(columns="y")  # x2 (and kind) are left over: the remainder, dropped


def test_numeric_preprocessing_is_the_same_arithmetic() -> None:
    ct, x = _numeric_preprocessor()
    fast = model_mod._NumericColumns.build(ct)
    assert fast is not None
    x.loc[::5, "a"] = np.nan  # imputed with the median learnt in fit
    assert np.array_equal(fast(x), ct.transform(x))
    x.loc[3, "a"] = np.inf  # sklearn's transform decides: it refuses infinity
    with pytest.raises(ValueError):
        fast(x)


def test_preprocessing_with_categories_keeps_sklearn() -> None:
    ct, _ = _numeric_preprocessor(categorical=True)
    assert model_mod._NumericColumns.build(ct) is None
