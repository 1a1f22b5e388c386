"""Loading a bundle, predicting with it, and swapping it for a new one without dropping a request."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from serving import store
from serving.contract import Contract
from serving.inputs import InputError, mlflow_rows, validate
from serving.signing import PublicKeys, verify_signature
from serving.trust import load_sklearn

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A bundle could not be loaded or failed its self-check; the server keeps its current model."""


@dataclass(frozen=True)
class Prediction:
    values: list[Any]
    probabilities: list[dict[str, float]] | None


@dataclass
class LoadedModel:
    bundle_id: str  # the store directory name, what CURRENT points to
    name: str
    version: str
    run_id: str | None
    trained_at: str | None
    metrics: dict[str, float]
    contract: Contract
    estimator: Any
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    self_check_rows: list[dict[str, Any]] = field(default_factory=list)
    card_html: str | None = None  # the bundle's model card, as verified at load; None: the bundle has none

    def predict(self, columns: dict[str, np.ndarray]) -> Prediction:
        import pandas as pd

        frame = pd.DataFrame(columns, copy=False)
        values = self.estimator.predict(frame)
        probabilities = None
        if self.contract.task == "classification" and hasattr(self.estimator, "predict_proba"):
            classes = [str(c) for c in self.estimator.classes_]
            probabilities = [dict(zip(classes, row)) for row in self.estimator.predict_proba(frame).tolist()]
        return Prediction(values.tolist(), probabilities)

    def self_check(self) -> None:
        """Predict on known-good rows; the result must be finite numbers or known classes."""
        batch = validate(self.self_check_rows, self.contract, max_rows=len(self.self_check_rows) or 1)
        values = self.predict(batch.columns).values
        if len(values) != batch.n_rows:
            raise ModelLoadError(f"self-check: {len(values)} predictions for {batch.n_rows} rows")
        if self.contract.task == "regression":
            if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
                raise ModelLoadError(f"self-check: non-finite regression output {values[:3]}")
        elif not set(values) <= set(self.estimator.classes_.tolist()):
            raise ModelLoadError(f"self-check: predictions {values[:3]} are not among the model's classes")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "trained_at": self.trained_at,
                "metrics": self.metrics, "schema_hash": self.contract.hash, "task": self.contract.task,
                "loaded_at": self.loaded_at}


def load_bundle(bundle: Path, trusted: PublicKeys) -> LoadedModel:
    """Verify the signature with a `trusted` key, then every file against the signed manifest, and only then
    read the model (with serving/trust.py's allow-list); self-check it. Raises ModelLoadError."""
    try:
        verify_signature(bundle, trusted)
        store.verify_manifest(bundle)
        meta = store.read_metadata(bundle)
        model_dir = bundle / store.MODEL_DIR
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        contract = Contract.from_mlmodel(mlmodel)
        estimator = load_sklearn(model_dir, mlmodel)
        card = bundle / store.CARD_HTML
        card_html = card.read_text(encoding="utf-8") if card.is_file() else None
    except Exception as exc:  # noqa: BLE001 - whatever a bad bundle raises, it is refused, never served
        raise ModelLoadError(f"bundle {bundle.name}: {type(exc).__name__}: {exc}") from exc
    _single_threaded(estimator)
    _install_fast_paths(estimator)
    model = LoadedModel(bundle.name, str(meta.get("name", "model")), str(meta.get("version", bundle.name)),
                        meta.get("run_id"), meta.get("trained_at"), meta.get("metrics") or {}, contract, estimator,
                        self_check_rows=[contract.example_row(), *_input_example(model_dir, mlmodel)],
                        card_html=card_html)
    try:
        _check_fast_paths(model)
        model.self_check()
    except InputError as exc:
        raise ModelLoadError(f"bundle {bundle.name}: self-check input rejected: {exc.message}") from exc
    except ModelLoadError as exc:
        raise ModelLoadError(f"bundle {bundle.name}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model refuses it
        raise ModelLoadError(f"bundle {bundle.name}: self-check prediction failed: {type(exc).__name__}: {exc}") \
            from exc
    return model


def _single_threaded(estimator: Any) -> None:
    """Parallelism comes from workers and batching; a joblib pool per call costs more than it gives."""
    steps = getattr(estimator, "steps", [(None, estimator)])
    for _, step in steps:
        if "n_jobs" in getattr(step, "get_params", dict)():
            step.set_params(n_jobs=1)


class _SummedTrees:
    """A forest regressor's predict without sklearn's per-tree joblib dispatch.

    Even with n_jobs=1, sklearn runs every tree's predict through joblib and its config and
    warning-filter wrappers, about 0.1 ms per tree per call: 20-30 ms for 200 trees on one row,
    most of a worker's CPU under load. This does the same arithmetic (float32 input compared as
    float64 with each node's threshold, each tree's leaf value added in tree order to a float64
    sum, divided by the count), so the result is bit-identical; `_check_fast_paths` compares it
    with sklearn's on known rows at load. Anything unusual (sparse, non-finite, wrong width, extra
    params) goes to sklearn's own predict.

    Up to VECTOR_MAX_ROWS rows, all trees are walked at once, one numpy step per level: ~0.1 ms
    for one row of 200 trees against ~0.5 ms for 200 calls of the trees' own predict. Beyond
    that the trees' compiled predict, one tree at a time, is faster.
    """

    VECTOR_MAX_ROWS = 64

    def __init__(self, forest: Any) -> None:
        self.original = type(forest).predict.__get__(forest)
        self.n_features = forest.n_features_in_
        self.trees = [tree.tree_ for tree in forest.estimators_]
        # All trees' nodes in flat arrays. A leaf gets threshold +inf and itself as both children,
        # so a walk of max_depth steps from every root ends on each tree's leaf.
        offsets = np.cumsum([0] + [tree.node_count for tree in self.trees[:-1]])
        feature, threshold, children, value = [], [], [], []
        for tree, offset in zip(self.trees, offsets):
            leaf = tree.children_left == -1
            own = np.arange(tree.node_count)
            feature.append(np.where(leaf, 0, tree.feature))
            threshold.append(np.where(leaf, np.inf, tree.threshold))
            children.append(np.stack([np.where(leaf, own, tree.children_left),
                                      np.where(leaf, own, tree.children_right)], axis=1) + offset)
            value.append(tree.value[:, 0, 0])
        self.roots = offsets.astype(np.intp)
        self.feature = np.concatenate(feature).astype(np.intp)
        self.threshold = np.concatenate(threshold).astype(np.float64)
        self.children = np.concatenate(children).ravel().astype(np.intp)  # [2 * node + went right]
        self.value = np.concatenate(value).astype(np.float64)
        self.depth = max(tree.max_depth for tree in self.trees)

    def __call__(self, X: Any, **params: Any) -> np.ndarray:
        if params or not hasattr(X, "__array__") or hasattr(X, "tocsr"):
            return self.original(X, **params)
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features or not np.isfinite(x).all():
            return self.original(X)
        return self._walk_all(x) if x.shape[0] <= self.VECTOR_MAX_ROWS else self._tree_by_tree(x)

    def _tree_by_tree(self, x: np.ndarray) -> np.ndarray:
        total = np.zeros(x.shape[0], dtype=np.float64)
        for tree in self.trees:
            total += tree.predict(x)[:, 0]
        total /= len(self.trees)
        return total

    def _walk_all(self, x: np.ndarray) -> np.ndarray:
        flat = x.astype(np.float64).ravel()
        row_start = (np.arange(x.shape[0]) * self.n_features)[:, None]
        node = np.broadcast_to(self.roots, (x.shape[0], len(self.roots)))
        for _ in range(self.depth):
            right = flat.take(self.feature.take(node) + row_start) > self.threshold.take(node)
            node = self.children.take(2 * node + right)
        # cumsum adds left to right, as the tree-by-tree loop does; sum() would add pairwise.
        return np.cumsum(self.value.take(node), axis=1)[:, -1] / len(self.trees)


class _NumericColumns:
    """A fitted ColumnTransformer whose only non-empty part is numeric columns through a SimpleImputer
    and/or StandardScaler, as the numpy arithmetic those perform: NaN -> fill value, then
    (x - mean) / scale, in float64 and in that order, so the result is bit-identical.

    sklearn's own transform costs ~2 ms per call whatever the row count (pandas indexing, joblib
    dispatch, input validation per step), against ~0.1 ms for the arithmetic: most of a one-row
    predict once the forest sums its trees directly. Infinite values or a frame without the
    columns go to sklearn's transform.
    """

    def __init__(self, column_transformer: Any, blocks: list[tuple[list[str], Any, Any, Any]]) -> None:
        self.original = type(column_transformer).transform.__get__(column_transformer)
        self.blocks = blocks  # (columns, fill values or None, means or None, scales or None)

    @classmethod
    def build(cls, ct: Any) -> "_NumericColumns | None":
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        if getattr(ct, "sparse_output_", True) or (getattr(ct, "_sklearn_output_config", None) or {}).get(
                "transform", "default") != "default":
            return None
        blocks = []
        for _, transformer, columns in ct.transformers_:
            if isinstance(transformer, str) and transformer == "drop":
                continue
            if isinstance(columns, slice) or not all(isinstance(c, str) for c in columns):
                return None
            if not len(columns):
                continue
            steps = [step for _, step in transformer.steps] if type(transformer) is Pipeline else [transformer]
            imputer = steps.pop(0) if steps and type(steps[0]) is SimpleImputer else None
            scaler = steps.pop(0) if steps and type(steps[0]) is StandardScaler else None
            if steps or (imputer is None and scaler is None):
                return None
            fill = mean = scale = None
            if imputer is not None:
                fill = np.asarray(imputer.statistics_)
                missing = imputer.missing_values
                if imputer.add_indicator or fill.dtype.kind != "f" or not np.isfinite(fill).all() \
                        or not (isinstance(missing, float) and np.isnan(missing)):
                    return None
            if scaler is not None:
                mean = scaler.mean_ if scaler.with_mean else None
                scale = scaler.scale_ if scaler.with_std else None
            blocks.append((list(columns), fill, mean, scale))
        return cls(ct, blocks) if blocks else None

    def __call__(self, X: Any, **params: Any) -> Any:
        if params or not hasattr(X, "columns") or not all(c in X.columns for b in self.blocks for c in b[0]):
            return self.original(X, **params)
        parts = []
        for columns, fill, mean, scale in self.blocks:
            x = np.column_stack([np.asarray(X[c], dtype=np.float64) for c in columns])
            if np.isinf(x).any():
                return self.original(X)
            if fill is not None:
                x = np.where(np.isnan(x), fill, x)
            if mean is not None:
                x = x - mean
            if scale is not None:
                x = x / scale
            parts.append(x)
        return parts[0] if len(parts) == 1 else np.hstack(parts)


def _install_fast_paths(estimator: Any) -> None:
    """Instance attributes that Pipeline.predict calls instead of sklearn's methods: a numeric-only
    ColumnTransformer as `_NumericColumns`, a final forest regressor (one output) as `_SummedTrees`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    steps = [step for _, step in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    if type(steps[0]) is ColumnTransformer and len(steps) > 1:
        numeric = _NumericColumns.build(steps[0])
        if numeric is not None:
            steps[0].transform = numeric
    final = steps[-1]
    if type(final) in (RandomForestRegressor, ExtraTreesRegressor) and getattr(final, "n_outputs_", 0) == 1:
        final.predict = _SummedTrees(final)


def _check_fast_paths(model: LoadedModel) -> None:
    """The fast paths stay only if the model answers exactly as with sklearn's own methods on the self-check rows."""
    steps = [step for _, step in model.estimator.steps] if hasattr(model.estimator, "steps") else [model.estimator]
    installed = [(step, name, fast) for step in steps for name, fast in list(vars(step).items())
                 if isinstance(fast, (_SummedTrees, _NumericColumns))]
    if not installed or not model.self_check_rows:
        return
    # The rows as they are, and repeated past the forest's vectorised size: both of its ways are checked.
    rows = model.self_check_rows * (1 + _SummedTrees.VECTOR_MAX_ROWS // len(model.self_check_rows))
    batches = [validate(r, model.contract, max_rows=len(r)) for r in (model.self_check_rows, rows)]
    got = [model.predict(batch.columns).values for batch in batches]
    for step, name, _ in installed:
        delattr(step, name)
    expected = [model.predict(batch.columns).values for batch in batches]
    if got == expected:
        for step, name, fast in installed:
            setattr(step, name, fast)
    else:
        log.warning("bundle %s: the fast paths answer differently from sklearn's methods; using sklearn's",
                    model.bundle_id)


def _input_example(model_dir: Path, mlmodel: dict[str, Any]) -> list[dict[str, Any]]:
    info = mlmodel.get("saved_input_example_info") or {}
    path = model_dir / info.get("serving_input_path", "serving_input_example.json")
    if not path.is_file():
        return []
    rows, _ = mlflow_rows(json.loads(path.read_text()))
    return rows if isinstance(rows, list) else []


class ModelHolder:
    """The model a worker serves. Follows the store's CURRENT pointer; swaps only to a model that passed its checks."""

    def __init__(self, store_dir: Path, trusted: PublicKeys,
                 on_event: Callable[[str, str], None] = lambda version, outcome: None):
        self.store_dir, self.trusted = store_dir, trusted
        self.current: LoadedModel | None = None
        self.refused: dict[str, str] | None = None  # the last version refused, and why
        self._on_event = on_event
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def refresh(self) -> bool:
        """Load the version CURRENT names if it is new; True when the served model changed."""
        with self._lock:
            wanted = store.read_pointer(self.store_dir)
            if wanted is None or (self.current and self.current.bundle_id == wanted) \
                    or (self.refused and self.refused["version"] == wanted):
                return False
            started = time.perf_counter()
            try:
                model = load_bundle(self.store_dir / wanted, self.trusted)
            except ModelLoadError as exc:
                self.refused = {"version": wanted, "error": str(exc)}
                log.error("refused model %s; still serving %s: %s", wanted,
                          self.current.version if self.current else "nothing", exc)
                self._on_event(wanted, "refused")
                return False
            old, self.current, self.refused = self.current, model, None  # one reference assignment: atomic
            log.info("now serving %s version %s (was %s); loaded and checked in %.2fs", model.name, model.version,
                     old.version if old else "nothing", time.perf_counter() - started)
            self._on_event(model.version, "loaded")
            return True

    def watch(self, interval: float) -> threading.Thread:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - the watcher must outlive any one bad bundle
                    log.exception("model refresh failed; still serving the current model")

        thread = threading.Thread(target=loop, name="model-watcher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

