"""Loading a bundle, predicting with it, and swapping it for a new one without dropping a request."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import yaml

from serving import pointer as pointers
from serving import provenance, store, trust
from serving.body import InputError, mlflow_rows
from serving.contract import Contract
from serving.engine import ONNX, SKLEARN, Engine, OnnxPredictor, load_predictor, sklearn_predictor
from serving.inputs import validate
from serving.pointer import Pointer, PointerError
from serving.signing import PublicKeys, verify_manifest_signature

if TYPE_CHECKING:
    from serving.explain import Explainer

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
    provenance: bytes | None = None  # the bundle's provenance.json, verified at load; None: the bundle has none
    engine: Engine = Engine(SKLEARN, "not compiled")
    compiled: OnnxPredictor | None = None  # beside the estimator, which stays untouched
    manifest_sha256: str = ""  # of the signed manifest the model was built from
    pointer: Pointer | None = None  # the signed pointer it was loaded for (None: checked without one)
    # explainer(): built on first use, once per loaded bundle; or why it cannot be (an ExplainError, kept)
    _explainer: Explainer | None = field(default=None, init=False, repr=False, compare=False)
    _explain_error: str | None = field(default=None, init=False, repr=False, compare=False)
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def predict(self, columns: dict[str, np.ndarray], numeric: np.ndarray | None = None) -> Prediction:
        """`numeric`: the numeric columns as one array too, when validation made one (inputs.Batch.numeric)."""
        # ONNX Runtime's session.run is safe from many threads at once; the estimator stays for the fallback.
        values, probabilities = self.compiled.predict(columns, numeric) if self.compiled \
            else self.sklearn_predict(columns)
        if probabilities is None:
            return Prediction(values.tolist(), None)
        classes = [str(c) for c in self.estimator.classes_]
        return Prediction(values.tolist(), [dict(zip(classes, row)) for row in probabilities.tolist()])

    def sklearn_predict(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """The estimator's own answers: values, and class probabilities for a classifier that has them."""
        return sklearn_predictor(self.estimator, self.contract)(columns)

    def explainer(self, build: bool = True) -> Explainer | None:
        """The model's explainer (serving/explain.py), built on the first call under a lock, then the same object
        for the bundle's life (build=False: None until then). Raises ExplainError when the model cannot be
        explained; why is kept, so a model that cannot be is tried once, not on every request."""
        from serving.explain import ExplainError, build_explainer  # shap itself is imported when a tree is built

        with self._explain_lock:
            if build and self._explainer is None and self._explain_error is None:
                started = time.perf_counter()
                try:
                    self._explainer = build_explainer(self.estimator, self.contract)
                    log.info("model %s version %s: %s explainer built in %.2fs", self.name, self.version,
                             self._explainer.method, time.perf_counter() - started)
                except Exception as exc:  # noqa: BLE001 - whatever fails, the model is not explained; kept
                    self._explain_error = str(exc) if isinstance(exc, ExplainError) else \
                        f"building the explainer failed: {type(exc).__name__}: {exc}"
                    log.warning("model %s version %s cannot be explained: %s", self.name, self.version,
                                self._explain_error, exc_info=not isinstance(exc, ExplainError))
            if self._explain_error is not None:
                raise ExplainError(self._explain_error)
            return self._explainer

    def self_check(self) -> None:
        """Predict on known-good rows; the result must be finite numbers or known classes."""
        batch = validate(self.self_check_rows, self.contract, max_rows=len(self.self_check_rows) or 1)
        values = self.predict(batch.columns, batch.numeric).values
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
                "loaded_at": self.loaded_at, "engine": self.engine.name, "engine_fallback_reason": self.engine.reason}


NO_ONNX_MODEL = ("bundle has no model.onnx (exported before conversion at export; re-export to serve it with ONNX "
                 "Runtime)")


def load_bundle(bundle: Path, trusted: PublicKeys, pointer: Pointer | None = None) -> LoadedModel:
    """Read every file of the bundle once into memory (no symlinks, regular files only), verify the signature
    over those manifest bytes with a `trusted` key and every file's bytes against the signed manifest, check the
    manifest names the model and version of bundle.json (and of `pointer`, which must name this manifest's
    sha256), then build the model from those same bytes (serving/trust.py's allow-list) and self-check it.
    Nothing is read from disk again after hashing. Raises ModelLoadError.

    ONNX Runtime serves the bundle's model.onnx (converted and checked at export, signed with the rest) if it
    answers as the estimator on the self-check and edge rows; nothing here converts a model."""
    try:
        files = store.read_files(bundle)
        verify_manifest_signature(files.get(store.MANIFEST), files.get(store.SIGNATURE), trusted, bundle.name)
        manifest = store.check_files(files, bundle.name)
        meta = store.read_metadata(files, bundle.name)
        _check_names(bundle.name, manifest, meta, pointer)
        statement = _provenance(files, trusted, meta)  # before any model byte is deserialized
        model_files = trust.model_files(files, store.MODEL_DIR)
        mlmodel = yaml.safe_load(model_files["MLmodel"])
        contract = Contract.from_mlmodel(mlmodel)
        estimator = trust.load_sklearn(model_files, mlmodel)
        card = files.get(store.CARD_HTML)
        card_html = card.decode("utf-8") if card is not None else None
        rows = self_check_rows(model_files, mlmodel, contract)
        model_onnx = files.get(store.ONNX_MODEL)
    except Exception as exc:  # noqa: BLE001 - whatever a bad bundle raises, it is refused, never served
        raise ModelLoadError(f"bundle {bundle.name}: {type(exc).__name__}: {exc}") from exc
    _single_threaded(estimator)
    model = LoadedModel(bundle.name, manifest.model, manifest.version, meta.get("run_id"), meta.get("trained_at"),
                        meta.get("metrics") or {}, contract, estimator, self_check_rows=rows, card_html=card_html,
                        provenance=statement, manifest_sha256=manifest.sha256, pointer=pointer)
    try:
        if model_onnx is None:
            model.engine = Engine(SKLEARN, _not_converted(meta))
        else:
            model.compiled, model.engine = load_predictor(model_onnx, estimator, contract, model.self_check_rows,
                                                          model.sklearn_predict)
        if model.engine.name == ONNX:
            log.info("bundle %s: served by ONNX Runtime (agrees with sklearn on the checked rows)", bundle.name)
        else:
            log.warning("bundle %s: served by sklearn, not ONNX Runtime: %s", bundle.name, model.engine.reason)
        model.self_check()
    except InputError as exc:
        raise ModelLoadError(f"bundle {bundle.name}: self-check input rejected: {exc.message}") from exc
    except ModelLoadError as exc:
        raise ModelLoadError(f"bundle {bundle.name}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model refuses it
        raise ModelLoadError(f"bundle {bundle.name}: self-check prediction failed: {type(exc).__name__}: {exc}") \
            from exc
    return model


def _not_converted(meta: dict[str, Any]) -> str:
    """Why a bundle has no model.onnx: export's reason (it could not convert the model, or the result disagreed),
    or a bundle exported before export converted."""
    onnx = meta.get("onnx")
    if isinstance(onnx, dict) and onnx.get("converted") is False and onnx.get("reason"):
        return str(onnx["reason"])
    return NO_ONNX_MODEL


def self_check_rows(model_files: dict[str, bytes], mlmodel: dict[str, Any], contract: Contract) -> list[dict[str, Any]]:
    """The rows a bundle's model is checked on at load (and its model.onnx at export): the contract's example row
    and the model's signed input example (`model_files`: the model directory's files, as read once)."""
    return [contract.example_row(), *_input_example(model_files, mlmodel)]


def _provenance(files: dict[str, bytes], trusted: PublicKeys, meta: dict[str, Any]) -> bytes | None:
    """provenance.json's bytes once its signature, subjects (against the verified manifest) and model are checked;
    None for a bundle exported before provenance statements existed."""
    data = files.get(provenance.FILE)
    if data is None:
        return None
    provenance.verify(data, trusted, provenance.manifest_digests(files[store.MANIFEST]),
                      str(meta.get("name", "model")), str(meta.get("version")), meta.get("run_id"))
    return data


def _check_names(directory: str, manifest: store.Manifest, meta: dict[str, Any], pointer: Pointer | None) -> None:
    """The signed manifest names the model and version; bundle.json, the directory and the pointer must agree."""
    if (str(meta.get("name")), str(meta.get("version"))) != (manifest.model, manifest.version):
        raise store.BundleError(f"{store.METADATA} says {meta.get('name')!r} version {meta.get('version')!r}, the "
                                f"signed manifest {manifest.model!r} version {manifest.version!r}")
    if pointer is None:
        return  # checked before it is installed (a staging directory): the pointer will name the directory
    if manifest.version != directory:
        raise store.BundleError(f"the signed manifest is for version {manifest.version!r}, not {directory!r}: a "
                                "bundle copied under another version name")
    if (pointer.model, pointer.version) != (manifest.model, manifest.version):
        raise PointerError(f"the pointer names {pointer.model!r} version {pointer.version!r}, the signed manifest "
                           f"{manifest.model!r} version {manifest.version!r}")
    if pointer.bundle_sha256 != manifest.sha256:
        raise PointerError(f"the pointer names a bundle with manifest sha256 {pointer.bundle_sha256[:16]}..., this "
                           f"bundle's is {manifest.sha256[:16]}...")


def _single_threaded(estimator: Any) -> None:
    """Parallelism comes from workers and batching; a joblib pool per call costs more than it gives (when sklearn
    serves: the ONNX Runtime session has one thread of its own)."""
    steps = [step for _, step in getattr(estimator, "steps", [(None, estimator)])]
    # A calibrated classifier predicts with the fitted estimators it holds, not the one its parameters name.
    steps += [c.estimator for step in steps for c in getattr(step, "calibrated_classifiers_", ())]
    for step in steps:
        if "n_jobs" in getattr(step, "get_params", dict)():
            step.set_params(n_jobs=1)


def _input_example(model_files: dict[str, bytes], mlmodel: dict[str, Any]) -> list[dict[str, Any]]:
    info = mlmodel.get("saved_input_example_info") or {}
    data = model_files.get(str(info.get("serving_input_path", "serving_input_example.json")))
    if data is None:
        return []
    rows, _ = mlflow_rows(json.loads(data))
    return rows if isinstance(rows, list) else []


@dataclass(frozen=True, eq=False)
class Release:
    """The candidate a worker serves beside its champion (serving/release.py routes requests to it)."""

    candidate: LoadedModel
    mode: str  # "shadow" | "canary"
    share: float  # shadow: share of requests also scored by the candidate; canary: share it answers

    def describe(self) -> dict[str, Any]:
        return {"version": self.candidate.version, "mode": self.mode, "share": self.share}


@dataclass(frozen=True, eq=False)
class Served:
    """What a worker serves: swapped as one reference, so a request never sees a champion with another's release."""

    champion: LoadedModel | None = None
    release: Release | None = None


class ModelHolder:
    """The models a worker serves: the champion and, during a release, a candidate. Follows the store's signed
    CURRENT pointer (serving/pointer.py); swaps only to models that passed their checks (both of them: a candidate
    that fails refuses the whole pointer), and never to a pointer older than the last one it applied."""

    def __init__(self, store_dir: Path, trusted: PublicKeys,
                 on_event: Callable[..., None] = lambda version, outcome, engine=None: None,
                 model_name: str | None = None):
        """on_event(version, outcome, engine): outcome "loaded" (engine: its name and fallback reason; None for a
        candidate) or "refused". `model_name` (SERVING_MODEL_NAME) pins the model; None: the model of the first
        pointer applied (or of the store's record of the last one applied, <store>/.sequence)."""
        self.store_dir, self.trusted = store_dir, trusted
        self.model_name = model_name
        self.served = Served()
        self.refused: dict[str, str] | None = None  # the last version refused, and why
        self.applied: pointers.Applied | None = None  # this worker's high-water mark
        self._seen: bytes | None = None  # the CURRENT bytes last acted on (loaded or refused)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def current(self) -> LoadedModel | None:
        """The champion: what answers every request outside a canary's share."""
        return self.served.champion

    @property
    def release(self) -> Release | None:
        return self.served.release

    def refresh(self) -> bool:
        """Follow CURRENT if it changed; True when the served models changed."""
        with self._lock:
            try:
                data = store.read_pointer(self.store_dir)
            except (OSError, store.BundleError) as exc:
                data = str(exc).encode()  # refused below like any other pointer that is not one
            if data is None or data == self._seen:
                return False
            self._seen = data
            started = time.perf_counter()
            named = pointers.peek(data)
            wanted = named.version if named else store.CURRENT
            try:
                pointer = pointers.verify(data, self.trusted)
                served = self._load(pointer)
            except (store.BundleError, ModelLoadError) as exc:
                self.refused = {"version": wanted, "error": str(exc)}
                if named and named.candidate:
                    self.refused["candidate"] = named.candidate.version
                log.error("refused model %s%s; still serving %s: %s", wanted,
                          f" with candidate {named.candidate.version}" if named and named.candidate else "",
                          _named(self.served), exc)
                self._on_event(wanted, "refused")
                return False
            self.applied, self.refused = pointers.applied(pointer), None
            if self.model_name is None:
                self.model_name = pointer.model  # pinned: the first pointer this process applied
            old, self.served = self.served, served  # one reference assignment: both models at once
            if old.champion is served.champion and _same_release(old.release, served.release):
                return False
            log.info("now serving %s (was %s; pointer sequence %d%s); loaded and checked in %.2fs", _named(served),
                     _named(old), pointer.sequence, ", a rollback" if pointer.rollback else "",
                     time.perf_counter() - started)
            assert served.champion is not None
            if served.champion is not old.champion:
                engine = served.champion.engine
                self._on_event(served.champion.version, "loaded", (engine.name, engine.reason))
            if served.release is not None and (old.release is None
                                               or served.release.candidate is not old.release.candidate):
                self._on_event(served.release.candidate.version, "loaded")
            return True

    def _load(self, pointer: Pointer) -> Served:
        """The models `pointer` names, checked and loaded; a model already served (same bundle and manifest) is
        reused, not loaded again (a promotion makes the candidate the champion at no cost)."""
        bundle = pointers.check(pointer, self.store_dir, self._pinned(), self._last_applied())
        loaded = {(m.bundle_id, m.manifest_sha256): m for m in (self.served.champion, self.served.release
                                                                 and self.served.release.candidate) if m}
        champion = loaded.get((pointer.version, pointer.bundle_sha256)) or load_bundle(bundle, self.trusted, pointer)
        if pointer.candidate is None:
            return Served(champion)
        named = pointer.candidate
        candidate = loaded.get((named.version, named.bundle_sha256))
        if candidate is None:
            directory = pointers.candidate_dir(pointer, self.store_dir)
            assert directory is not None
            candidate = load_bundle(directory, self.trusted, pointers.as_candidate(pointer))
        return Served(champion, Release(candidate, named.mode, named.share))

    def _last_applied(self) -> pointers.Applied | None:
        """The higher of this worker's high-water mark and the store's record (<store>/.sequence)."""
        recorded = pointers.read_applied(self.store_dir)
        candidates = [a for a in (self.applied, recorded) if a is not None]
        return max(candidates, key=lambda a: a.sequence) if candidates else None

    def _pinned(self) -> str | None:
        if self.model_name is not None:
            return self.model_name
        recorded = pointers.read_applied(self.store_dir)
        return recorded.model if recorded else None

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


def _same_release(a: Release | None, b: Release | None) -> bool:
    """The same candidate object in the same mode and share (models compare by identity, never field by field)."""
    if a is None or b is None:
        return a is b
    return a.candidate is b.candidate and (a.mode, a.share) == (b.mode, b.share)


def _named(served: Served) -> str:
    if served.champion is None:
        return "nothing"
    champion = f"{served.champion.name} version {served.champion.version}"
    release = served.release
    return champion if release is None else \
        f"{champion} with candidate {release.candidate.version} ({release.mode} {release.share:g})"
