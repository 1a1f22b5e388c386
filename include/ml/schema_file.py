"""schema.yaml as typed, immutable models: the dataset's contract, its columns (type, role, allowed values) and
its target.

`configuration.py` reads the file and validates it into `SchemaConfig`. Like every config model
(include/ml/frozen.py) they are frozen, strict and closed; documented in docs/configuration.md.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from include.ml.frozen import Frozen

TASKS = ("regression", "classification")
DTYPES = ("float", "int", "category", "ordinal", "datetime", "string")
ROLES = ("feature", "target", "id", "ignore")

Task = Literal["regression", "classification"]


class ColumnSpec(Frozen):
    """One column of schema.yaml: its type, its role, and what values it may hold."""

    name: str
    dtype: Literal["float", "int", "category", "ordinal", "datetime", "string"]
    role: Literal["feature", "target", "id", "ignore"] = "feature"
    nullable: bool = False
    max_null_fraction: float = Field(0.5, ge=0, lt=1)  # when nullable: the largest share of missing values
    # Inclusive range: numbers for float and int columns; ISO dates or datetimes for datetime columns.
    min: float | str | None = None
    max: float | str | None = None
    # category: the values accepted (None: any value, unseen ones handled by the encoder)
    allowed: tuple[Any, ...] | None = Field(None, strict=False, min_length=1)
    # ordinal: the values in order, lowest first
    categories: tuple[Any, ...] | None = Field(None, strict=False, min_length=1, validate_default=True)
    encoding: Literal["onehot", "target", "native"] | None = None  # category; None: chosen by cardinality and family
    min_frequency: int | None = Field(None, ge=1)  # onehot: rarer values share the infrequent column
    max_categories: int | None = Field(None, ge=2)  # onehot: at most this many columns, the infrequent one included
    format: str | None = None  # datetime: a strftime format, or unix / unix_ms; None: ISO 8601
    cyclical: bool = False  # datetime: month, day of week and hour also as sine and cosine

    @field_validator("min", "max", mode="before")
    @classmethod
    def _dates_as_text(cls, value: Any) -> Any:
        """YAML reads an unquoted 2013-01-01 as a date: a datetime column's bound, kept as ISO text."""
        return value.isoformat() if isinstance(value, (date, datetime)) else value

    @field_validator("min", "max", "allowed", "categories", "encoding", "format", "cyclical")
    @classmethod
    def _fits_the_dtype(cls, value: Any, info: ValidationInfo) -> Any:
        dtype, key = info.data.get("dtype"), info.field_name
        if value in (None, False):
            if key == "categories" and dtype == "ordinal":
                raise ValueError("an ordinal column needs categories: its values in order, lowest first")
            return value
        if dtype not in _KEYS_BY_DTYPE[key]:  # type: ignore[index]
            hint = " (an ordinal column lists its values in order under categories)" \
                if key == "allowed" and dtype == "ordinal" else ""
            raise ValueError(f"{key} applies to {' and '.join(_KEYS_BY_DTYPE[key])} columns, not {dtype}{hint}")
        if key in ("allowed", "categories") and len({(type(v), v) for v in value}) != len(value):
            raise ValueError(f"{key} lists a value twice")
        if key in ("min", "max") and dtype == "datetime":
            return _iso_bound(value)
        if key in ("min", "max") and isinstance(value, str):
            raise ValueError(f"expected a number for a {dtype} column, got str {value!r}")
        return value

    @field_validator("min_frequency", "max_categories")
    @classmethod
    def _onehot_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("encoding") != "onehot":
            raise ValueError(f"{info.field_name} applies to encoding: onehot")
        return value

    @model_validator(mode="after")
    def _range(self) -> ColumnSpec:
        low, high = self.moment_range() if self.dtype == "datetime" else (self.min, self.max)
        if low is not None and high is not None and low > high:  # type: ignore[operator]
            raise ValueError(f"min ({self.min}) is {'later' if self.dtype == 'datetime' else 'greater'} than max "
                             f"({self.max})")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.dtype in ("float", "int")

    def moment_range(self) -> tuple[datetime | None, datetime | None]:
        """A datetime column's min and max as naive UTC datetimes; a `max` given as a date means its whole day."""
        low = None if self.min is None else as_utc(datetime.fromisoformat(str(self.min)))
        high = None if self.max is None else as_utc(datetime.fromisoformat(str(self.max)))
        if high is not None and _date_only(str(self.max)):
            high += timedelta(days=1, microseconds=-1)
        return low, high

    @property
    def values(self) -> tuple[Any, ...] | None:
        """The values the column may hold: a category's allowed list or an ordinal's categories (None: any)."""
        return self.categories if self.dtype == "ordinal" else self.allowed


def _iso_bound(value: Any) -> str:
    try:
        datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"expected an ISO date or datetime such as 2024-01-31 or 2024-01-31T12:00:00, got "
                         f"{value!r}") from None
    return str(value)


# Which dtypes each optional key of a column applies to.
_KEYS_BY_DTYPE = {"min": ("float", "int", "datetime"), "max": ("float", "int", "datetime"),
                  "allowed": ("category",), "categories": ("ordinal",), "encoding": ("category",),
                  "format": ("datetime",), "cyclical": ("datetime",)}
# in the order ColumnSpec declares them: a validator sees the dtype (and the encoding) already validated


def as_utc(moment: datetime) -> datetime:
    """A naive datetime is taken as UTC; an aware one is converted to it (both end naive, as models see them)."""
    return moment if moment.tzinfo is None else moment.astimezone(timezone.utc).replace(tzinfo=None)


class TargetSpec(Frozen):
    """schema.yaml's `target`: the column to predict (`target: y` is short for `target: {name: y}`)."""

    name: str
    missing: Literal["drop", "error"] = "drop"  # rows without a target: dropped at ingest (counted), or a failure


class SchemaConfig(Frozen):
    """schema.yaml: the dataset's contract. In the file, `columns` maps each name to its spec."""

    task: Task
    target_spec: TargetSpec = Field(alias="target")
    min_rows: int = Field(1, ge=1)
    columns_not_in_schema: Literal["error", "ignore"] = "error"  # ignore: other columns of the file are dropped
    columns: tuple[ColumnSpec, ...] = Field(strict=False, min_length=1)

    @field_validator("target_spec", mode="before")
    @classmethod
    def _target_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("columns", mode="before")
    @classmethod
    def _named_columns(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [{"name": str(name), **spec} if isinstance(spec, dict) else spec for name, spec in value.items()]
        return value

    @property
    def target(self) -> str:
        return self.target_spec.name

    @property
    def target_missing(self) -> str:
        return self.target_spec.missing

    @property
    def features(self) -> tuple[ColumnSpec, ...]:
        """The model's inputs: every column with role feature, the target excepted."""
        return tuple(c for c in self.columns if c.role == "feature" and c.name != self.target)

    @property
    def ids(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role == "id")

    @property
    def ignored(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role == "ignore")

    def feature_contract(self) -> dict[str, Any]:
        """What a served model expects as input; stored with the model so the server validates against it."""
        return {"task": self.task, "target": self.target, "features": [_contract_entry(c) for c in self.features],
                "keys": [c.name for c in self.ids], "ignored": [c.name for c in self.ignored]}


def _contract_entry(column: ColumnSpec) -> dict[str, Any]:
    entry = column.model_dump(include={"name", "dtype", "nullable", "min", "max", "format"}, exclude_none=True)
    if column.dtype == "datetime":  # bounds as full ISO datetimes, naive UTC, what the server compares with
        entry |= {key: moment.isoformat() for key, moment in zip(("min", "max"), column.moment_range())
                  if moment is not None}
    return entry | ({"allowed": list(column.values)} if column.values else {})


def _date_only(text: str) -> bool:
    return len(text.strip()) == 10  # YYYY-MM-DD: fromisoformat takes no shorter date

