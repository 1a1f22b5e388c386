"""The input contract of a served model: its features, their types and ranges.

Training stores the contract from schema.yaml in the model's MLmodel metadata
(`feature_contract`), so the server validates against the schema the model was
trained with. A model logged elsewhere falls back to its MLflow signature
(names and types only).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Mapping

import numpy as np

# MLflow signature column types -> contract dtypes
_SIGNATURE_TYPES = {"double": "float", "float": "float", "long": "int", "integer": "int", "string": "string",
                    "boolean": "category"}


class ContractError(ValueError):
    """The model directory carries no usable description of its inputs."""


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # float | int | category | ordinal | datetime (string: a model logged elsewhere)
    nullable: bool = False
    min: float | str | None = None  # a datetime's bounds are naive UTC ISO datetimes
    max: float | str | None = None
    allowed: tuple[Any, ...] | None = None  # category: the values accepted (None: any); ordinal: in order
    format: str | None = None  # datetime: strftime format, unix or unix_ms; None: ISO 8601

    @property
    def is_numeric(self) -> bool:
        return self.dtype in ("float", "int")

    def datetime_span(self) -> tuple[np.datetime64, np.datetime64]:
        """A datetime feature's range (seconds): its min and max, a year from the one given, else the year 2020."""
        year = np.timedelta64(365 * 86400, "s")
        lo = None if self.min is None else np.datetime64(str(self.min), "s")
        hi = None if self.max is None else np.datetime64(str(self.max), "s")
        if lo is None and hi is None:
            lo = np.datetime64("2020-01-01T00:00:00", "s")
        return (hi - year if lo is None else lo), (lo + year if hi is None else hi)  # type: ignore[operator]

    def datetime_value(self, moment: np.datetime64) -> str | int:
        """A moment as a request gives it for this feature: ISO 8601 text (always accepted), or the number of
        seconds or milliseconds since 1970 for the unix and unix_ms formats."""
        seconds = moment.astype("datetime64[s]")
        if self.format == "unix":
            return int(seconds.astype(np.int64))
        if self.format == "unix_ms":
            return int(moment.astype("datetime64[ms]").astype(np.int64))
        return str(seconds)


@dataclass(frozen=True)
class Contract:
    task: str  # regression | classification
    features: tuple[Feature, ...]
    keys: tuple[str, ...] = ()  # id columns: optional in a request, recorded in capture as the row's key
    ignored: tuple[str, ...] = ()  # columns of the training data that are no input: optional in a request, dropped

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @cached_property
    def accepted(self) -> frozenset[str]:
        """Every column a request may carry: the features, the keys and the ignored columns."""
        return frozenset((*self.names, *self.keys, *self.ignored))

    @cached_property
    def keys_and_ignored(self) -> frozenset[str]:
        return frozenset((*self.keys, *self.ignored))

    @cached_property
    def numeric_bounds(self) -> tuple[tuple[str, ...], tuple[tuple[float, float, bool], ...]]:
        """The numeric features, and each one's bounds and whether it is an integer. The bounds are finite (a
        missing one is the largest double), so NaN and infinity fail `lo <= v <= hi`: what validation's fast path
        checks every value with."""
        numeric = [f for f in self.features if f.is_numeric]
        largest = sys.float_info.max
        return tuple(f.name for f in numeric), tuple(
            (-largest if f.min is None else max(f.min, -largest), largest if f.max is None else min(f.max, largest),
             f.dtype == "int") for f in numeric)

    @cached_property  # per request it would cost ~0.1 ms; a contract never changes
    def hash(self) -> str:
        canonical = json.dumps({"task": self.task, "features": [asdict(f) for f in self.features]},
                               sort_keys=True, default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_mlmodel(cls, mlmodel: Mapping[str, Any]) -> "Contract":
        stored = (mlmodel.get("metadata") or {}).get("feature_contract")
        if stored:
            return cls(stored["task"], tuple(
                Feature(f["name"], f["dtype"], bool(f.get("nullable", False)), f.get("min"), f.get("max"),
                        tuple(f["allowed"]) if f.get("allowed") else None, f.get("format"))
                for f in stored["features"]), tuple(stored.get("keys") or ()), tuple(stored.get("ignored") or ()))
        inputs = (mlmodel.get("signature") or {}).get("inputs")
        if not inputs:
            raise ContractError("MLmodel has neither metadata.feature_contract nor a signature with named inputs")
        features = []
        for col in json.loads(inputs):
            if "name" not in col or col.get("type") not in _SIGNATURE_TYPES:
                raise ContractError(f"unsupported signature input {col!r}: named scalar columns are required")
            dtype = _SIGNATURE_TYPES[col["type"]]
            features.append(Feature(col["name"], dtype, not col.get("required", True),
                                    allowed=(True, False) if col["type"] == "boolean" else None))
        outputs = (mlmodel.get("signature") or {}).get("outputs") or "[]"
        floats = any(o.get("tensor-spec", {}).get("dtype", "").startswith("float") or o.get("type") == "double"
                     for o in json.loads(outputs))
        return cls("regression" if floats else "classification", tuple(features))

    def example_row(self) -> dict[str, Any]:
        """A valid row: numeric and datetime features at the middle of their range, categories and ordinals at
        their first value, an open category "example" (key and ignored columns are optional: left out)."""
        row: dict[str, Any] = {}
        for f in self.features:
            if f.is_numeric:
                lo, hi = f.min, f.max
                mid = (lo + hi) / 2 if lo is not None and hi is not None else lo if lo is not None else hi or 0
                row[f.name] = round(mid) if f.dtype == "int" else mid
            elif f.dtype == "datetime":
                lo, hi = f.datetime_span()
                row[f.name] = f.datetime_value(lo + (hi - lo) // 2)
            else:
                row[f.name] = f.allowed[0] if f.allowed else "example"
        return row
