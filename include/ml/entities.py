"""The configuration as typed, immutable models: what the three YAML files of a config dir become.

`configuration.py` reads the files, applies the environment overrides and validates them into these
models. Every model is frozen (no stage can change its config), strict (YAML `"0.2"` is not a number,
`true` is not an int) and forbids unknown keys (a typo fails with the valid keys listed). Sections a
project does not use are optional; their defaults are the ones written here and documented in
include/config/config.yaml and docs/configuration.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from include.ml.models import FAMILIES
from include.ml.release_settings import ReleasePlan

TASKS = ("regression", "classification")
DTYPES = ("float", "int", "category", "ordinal", "datetime", "string")
ROLES = ("feature", "target", "id", "ignore")
DEPLOY_TARGETS = ("none", "local", "ec2")
# metric name -> True when a higher value is better (what each one is: include/ml/metrics.py)
METRICS: Mapping[str, Mapping[str, bool]] = MappingProxyType({
    "regression": MappingProxyType({"rmse": False, "mae": False, "r2": True}),
    "classification": MappingProxyType({"accuracy": True, "balanced_accuracy": True, "f1_macro": True,
                                        "roc_auc": True, "pr_auc": True, "log_loss": False, "brier_score": False}),
})

Task = Literal["regression", "classification"]
# A read-only mapping (a frozen model's dict would still be mutable), dumped as a plain dict.
FrozenMapping = Annotated[Mapping[str, Any], AfterValidator(MappingProxyType), PlainSerializer(dict)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- config.yaml -----------------------------------------------------------------------------------------------

class DataSourceConfig(Frozen):
    uri: str  # a local path (relative to the project root), http(s)://, s3://bucket/key; CSV or a zip holding one
    separator: str = ","
    zip_member: str | None = None  # the CSV inside a zip; None: its only CSV
    s3_endpoint_url: str | None = None  # None: AWS (or AWS_ENDPOINT_URL_S3)
    timeout_seconds: float = Field(30.0, gt=0)
    # Where a run's own source (the trigger form's) may point: URI prefixes (scheme + host + path; an entry
    # ending in "/" admits everything under it, others exactly that object) or local directories. Empty: only
    # `uri`. `uri` itself and MLOPS_SOURCE_URI are operator settings and are not checked against it.
    allowed_sources: tuple[str, ...] = Field((), strict=False)
    # Caps enforced while reading: 1 GiB is ~13x the 1M-row benchmark CSV (~80 MB), beyond the ~8M rows at which
    # a stage process reaches the 4 GB memory budget anyway (docs/benchmarks.md).
    max_bytes: int = Field(1 << 30, ge=1)  # the download (the archive, for a zip)
    max_uncompressed_bytes: int = Field(1 << 30, ge=1)  # the CSV inside a zip archive
    max_compression_ratio: float = Field(100.0, ge=1)  # uncompressed / compressed size of that CSV

    @field_validator("separator")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"expected a single character, got {value!r}")
        return value


class MlflowConfig(Frozen):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str | None = "mlruns/artifacts"  # None: the tracking server's default
    experiment_name: str  # default: the registered model name
    registered_model_name: str
    ui_url: str = "http://127.0.0.1:5000"  # where people open the MLflow UI; task links point here

    @model_validator(mode="before")
    @classmethod
    def _experiment_defaults_to_model_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "experiment_name" not in data and "registered_model_name" in data:
            return {**data, "experiment_name": data["registered_model_name"]}
        return data

    @field_validator("ui_url")
    @classmethod
    def _web_address(cls, value: str) -> str:
        """An http(s) address with a host: task links open it, so `javascript:` or `data:` would run in the UI."""
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// address with a host, such as http://127.0.0.1:5000, "
                             f"got {value!r}")
        return value.strip().rstrip("/")


def _cron(value: str | None) -> str | None:
    if value is not None and len(value.split()) != 5 and not value.startswith("@"):
        raise ValueError(f"expected a 5-field cron expression such as '0 2 * * *' (or null), got {value!r}")
    return value


Cron = Annotated[str | None, AfterValidator(_cron)]


class AirflowConfig(Frozen):
    schedule: Cron = "0 2 * * *"  # cron (UTC) of the nightly retrain; None: only when triggered
    # What starts ml_pipeline: its cron (`schedule`), the monitor's drift Asset event, or whichever comes first.
    retrain_on: Literal["schedule", "drift", "both"] = "schedule"
    monitor_schedule: Cron = "0 6 * * *"  # cron (UTC) of ml_monitor, after the nightly retrain window


class BatchConfig(Frozen):
    """Batch prediction: the ml_batch_predict DAG and `python main.py predict`."""

    schedule: Cron = None  # cron (UTC) of the DAG; None: only when triggered
    # What a run scores when its trigger form leaves them empty (a scheduled run always does). The input must lie
    # under data_source.allowed_sources; None: the form must name it.
    input_uri: str | None = None
    output_uri: str | None = None
    # Where a trigger form's output may go, as data_source.allowed_sources lists inputs: local directories or URI
    # prefixes (an entry ending in "/" admits everything under it). Empty: only `output_uri`. The CLI writes anywhere.
    allowed_outputs: tuple[str, ...] = Field((), strict=False)
    # The output's row key when the file has none of schema.yaml's id columns: copied from the file when it has this
    # column, else the 0-based row number under this name.
    id_column: str = "id"
    chunk_rows: int = Field(100_000, ge=1)  # rows read, validated and scored at a time: bounds the memory
    # The most one predict call's encoded input may take (rows x the model's encoded width x 8 bytes): a chunk goes
    # through the model in batches of that many rows, so a wide model (one-hot of thousands of values) stays bounded.
    encoded_mb: int = Field(64, ge=1)
    # Rows that break schema.yaml: fail the run (nothing written), skip them (left out of the output), or flag them
    # (kept, without a prediction, rejected=true). skip and flag list every bad row's reasons in <output>.rejected.csv.
    on_bad_rows: Literal["fail", "skip", "flag"] = "fail"
    # The ml_batch_predict DAG scores the input in this many partitions, one mapped task each, and combines their
    # parts into the output (include/release/partitions.py): CSV byte ranges, Parquet row groups, or the objects under
    # an s3:// prefix. 1: one partition. partition_mb (MiB of input per partition), when set, decides the count.
    partitions: int = Field(1, ge=1, le=256)
    partition_mb: int | None = Field(None, ge=1)


class LocalTargetConfig(Frozen):
    # The store the local prediction server reads; default models/<registered model name>, so two datasets
    # never share a store (their version names would collide).
    model_store: Path | None = Field(None, strict=False)
    server_url: str = "http://127.0.0.1:8000"

    @field_validator("server_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class Ec2TargetConfig(Frozen):
    aws_conn_id: str = "aws_default"  # an Airflow connection; credentials never go in a config file
    region: str = "us-east-1"
    s3_bucket: str = ""  # required when deployment.target is ec2
    s3_prefix: str = "models"
    tag_key: str = "Role"  # the fleet: running instances with this tag
    tag_value: str = "prediction-server"
    # How the deploy task reaches an instance's server; fields: instance_id, private_ip, public_ip,
    # private_dns, tags (e.g. {tags[Name]}).
    instance_url: str = "http://{private_ip}:8000"
    command_timeout_seconds: int = Field(600, ge=1)

    def source(self, model_name: str) -> str:
        return f"s3://{self.s3_bucket}/{self.s3_prefix.strip('/')}/{model_name}"


class DeploymentConfig(Frozen):
    target: Literal["none", "local", "ec2"] = "local"
    batch_size: int = Field(1, ge=1)  # servers refreshed at a time
    verify_timeout_seconds: float = Field(120.0, gt=0)  # per server: /ready and /version must show the version
    local: LocalTargetConfig = LocalTargetConfig()
    ec2: Ec2TargetConfig = Ec2TargetConfig()


class SigningConfig(Frozen):
    """Who signs bundles (export, deploy); servers trust the matching public key (SERVING_PUBLIC_KEY) only."""

    # The embedded default: a local ECDSA P-256 key pair, created on first use (private key mode 0600, keys/ is
    # git-ignored). A leaked private key lets its holder sign what every server then loads: keep it off servers.
    private_key: Path = Field(Path("keys/bundle-signing.key"), strict=False)
    public_key: Path = Field(Path("keys/bundle-signing.pub"), strict=False)
    # Production: an AWS KMS asymmetric key (key spec ECC_NIST_P256, usage SIGN_VERIFY) signs instead; the
    # private key never leaves KMS. Its public key (aws kms get-public-key) is what servers are given.
    kms_key_id: str | None = None
    kms_region: str | None = None  # default: deployment.ec2.region


class CardConfig(Frozen):
    """What the model card of every version says about its use (evaluate writes the card). A missing field is
    shown as a placeholder that says it is unfilled; the text is escaped, never read as HTML."""

    intended_use: str | None = None  # what the model is for, and for whom
    limitations: str | None = None  # where it must not be trusted: data it never saw, known biases
    owners: str | None = None  # who answers for it: a team, a person, a contact address
    license: str | None = None  # the model's licence (and the training data's, if it differs)


class MonitoringSources(Frozen):
    """Where the prediction server's captured requests and the delayed true labels are (docs/monitoring.md)."""

    # A local directory (relative to the project root) or s3://bucket/prefix; under it <model>/<YYYY-MM-DD>/.
    capture_dir: str = "capture"
    ground_truth_uri: str | None = None  # CSV or Parquet: request_id, optional row, the target; None: no labels
    s3_endpoint_url: str | None = None  # for s3:// capture dirs, e.g. a local S3 stand-in; None: AWS
    # Caps on one capture file, decompressed: a bigger one (a gzip bomb) is skipped with a warning naming it.
    max_file_mb: float = Field(256.0, gt=0)
    max_file_rows: int = Field(2_000_000, ge=1)


class ConfigFile(Frozen):
    """config.yaml: where the data comes from, where outputs go, how runs are tracked and deployed."""

    artifacts_root: Path = Field(Path("artifacts"), strict=False)
    data_source: DataSourceConfig
    mlflow: MlflowConfig
    airflow: AirflowConfig = AirflowConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    signing: SigningConfig = SigningConfig()
    card: CardConfig = CardConfig()
    batch: BatchConfig = BatchConfig()
    monitoring: MonitoringSources = MonitoringSources()


# --- schema.yaml -----------------------------------------------------------------------------------------------

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


# --- params.yaml -----------------------------------------------------------------------------------------------

class SplitConfig(Frozen):
    test_size: float = 0.2  # share of rows held out for evaluation and the gate
    random_state: int = 42  # same data + same seed = same split

    @field_validator("test_size")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"expected a number between 0 and 1, got {value}")
        return value


class ModelConfig(Frozen):
    family: str
    random_state: int = 42
    hyperparameters: FrozenMapping = Field(default_factory=dict, strict=False)
    # Classification: the classifier wrapped in scikit-learn's CalibratedClassifierCV (sigmoid: Platt scaling;
    # isotonic), cross-fitted on the training split; none: its own probabilities. Regression: none only.
    calibration: Literal["none", "sigmoid", "isotonic"] = "none"

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in FAMILIES:
            raise ValueError(f"unknown model family {value!r}; expected one of {', '.join(FAMILIES)}")
        return value


class PromotionConfig(Frozen):
    metric: str  # the metric the champion/challenger gate compares on the held-out set
    # The challenger must win by at least this much: a number is absolute (in the metric's units); a text ending in
    # "%", such as "1%", is relative: that share of the champion's value (its absolute value).
    min_improvement: float | str = 0.001

    @field_validator("min_improvement", mode="before")
    @classmethod
    def _number_or_percentage(cls, value: Any) -> float | str:
        problem = ("expected a number >= 0 (absolute) or a percentage such as 1% (of the champion's value), got "
                   + ("null" if value is None else f"{type(value).__name__} {value!r}"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise ValueError(problem)
            return float(value)
        if isinstance(value, str) and value.strip().endswith("%"):
            number = value.strip()[:-1].strip()
            try:
                share = float(number)
            except ValueError:
                share = math.nan
            if not math.isfinite(share) or share < 0:
                raise ValueError(problem)
            return f"{number}%"
        raise ValueError(problem)

    @property
    def higher_is_better(self) -> bool:
        return any(metrics.get(self.metric, False) for metrics in METRICS.values())

    @property
    def relative(self) -> bool:
        return isinstance(self.min_improvement, str)

    def margin(self, champion: float) -> float:
        """The least gain over a champion scoring `champion` that promotes a challenger."""
        if isinstance(self.min_improvement, str):
            return float(self.min_improvement[:-1]) / 100 * abs(champion)
        return self.min_improvement


class DriftThresholds(Frozen):
    """Per-feature overrides of the global drift thresholds; a key left out keeps the global value."""

    p_value: float | None = Field(None, gt=0, lt=1)
    psi: float | None = Field(None, gt=0)
    jensen_shannon: float | None = Field(None, gt=0, le=1)


class AttributionPolicy(Frozen):
    """Attribution drift (docs/monitoring.md): what drives the champion's predictions on its traffic against what
    drove them on its held-out rows at evaluate, compared as each input column's share of the mean |attribution|."""

    share_change: float = Field(0.1, gt=0, le=1)  # a column drifts when its share moved by at least this (absolute)
    rows: int = Field(500, ge=1)  # captured rows explained (a sample of them when there are more)
    seconds: float = Field(10.0, gt=0)  # fewer rows when explaining them would take longer than this


class MonitoringPolicy(Frozen):
    """How the monitor decides that live inputs drifted from the champion's training data (docs/monitoring.md).

    A feature drifts only when its test is significant after the correction across features AND its distance is
    past the threshold: with large samples every tiny difference is significant, so the effect size must matter too.
    """

    period_hours: float = Field(24.0, gt=0)  # the captured rows of this many hours before the run's time
    min_rows: int = Field(100, ge=2)  # fewer non-missing values on either side: "not enough data", never drift
    p_value: float = Field(0.05, gt=0, lt=1)  # after the correction for testing many features
    correction: Literal["bonferroni", "benjamini_hochberg"] = "bonferroni"
    psi: float = Field(0.1, gt=0)  # numeric: population stability index on the reference's quantile bins
    jensen_shannon: float = Field(0.1, gt=0, le=1)  # categorical: Jensen-Shannon distance (base 2)
    bins: int = Field(10, ge=2)  # quantile bins of the PSI
    quality_drop: float = Field(0.1, ge=0)  # a live promotion metric this much (relative) worse than the test's
    features: Annotated[Mapping[str, DriftThresholds], AfterValidator(MappingProxyType), PlainSerializer(dict)] = \
        Field(default_factory=dict, strict=False)
    attribution: AttributionPolicy = AttributionPolicy()


class LeakagePolicy(Frozen):
    """The leakage warning at evaluate (include/ml/components/explanations.py, docs/configuration.md): a feature that
    alone explains almost all of the model's score may not be known when a prediction is asked for."""

    share: float = Field(0.6, gt=0, le=1)  # a column's share of the mean |attribution| on the test sample
    # a single-column model (same family, default hyperparameters; the top 3 columns by attribution) reaching this
    # share of the full model's test R^2 (regression) or ROC AUC above chance (classification)
    single_column: float = Field(0.9, gt=0, le=1)
    fail: bool = False  # true: a leakage warning makes the gate refuse promotion
    rows: int = Field(500, ge=10)  # test rows explained, at most
    seconds: float = Field(10.0, gt=0)  # fewer rows when explaining them would take longer than this


class SearchParam(Frozen):
    """One hyperparameter's search range: `low`..`high` (ints when both are ints; `log`: sampled on a log
    scale) or a list of `choices`."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = Field(None, strict=False, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        bounds = (self.low, self.high)
        if self.choices is not None:
            if bounds != (None, None) or self.log:
                raise ValueError("give either choices or low/high (and log), not both")
        elif None in bounds:
            raise ValueError("expected low and high (a range) or choices (a list)")
        elif self.low >= self.high:  # type: ignore[operator]
            raise ValueError(f"low ({self.low}) must be less than high ({self.high})")
        elif self.log and self.low <= 0:  # type: ignore[operator]
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


STUDY_DATABASES = ("sqlite", "postgresql", "mysql")  # what tuning.storage may be (a driver after +)


class SearchPlan(Frozen):
    """The `tuning:` section: an Optuna search before training. Without the section there is no tuning."""

    enabled: bool = True
    # The budget: the wall clock first, trials as a cap. No trial starts once timeout_seconds are spent, and a
    # trial running then stops after its current fold (unless no trial has completed yet). None: no clock limit
    # (until n_trials) / no cap (until timeout_seconds); one of the two must be set.
    timeout_seconds: float | None = Field(300, gt=0)
    n_trials: int | None = Field(100, ge=1)
    cv_folds: int = Field(3, ge=2)  # k-fold cross-validation on the training split
    # A trial is judged against the others (and may be pruned) only once this many of its folds are scored;
    # equal to cv_folds: no pruning.
    prune_after_folds: int = Field(2, ge=1)
    seed: int = 42  # same data + same seed = same trials in the same order (how many: the budget)
    families: tuple[str, ...] | None = Field(None, strict=False, min_length=1)  # None: every family
    # family -> hyperparameter -> range; a family listed here is searched over exactly these (replacing
    # its default space in include/ml/models.py).
    search_space: Mapping[str, Mapping[str, SearchParam]] = Field(default_factory=dict, strict=False)
    # Workers running trials against one shared study at once (the DAG's mapped tune_worker tasks; main.py: local
    # processes). Each has its own TPE sampler seeded seed + its index; parallel TPE is not bit-identical across N.
    workers: int = Field(1, ge=1)
    # The study's database, a SQLAlchemy URL: sqlite:///..., postgresql+psycopg2://..., mysql+pymysql://...
    # (its own database: Optuna keeps an alembic_version table). None: a SQLite file in the run's tune folder.
    storage: str | None = None

    @field_validator("storage")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme.partition("+")[0] not in STUDY_DATABASES:
            raise ValueError(f"expected a SQLAlchemy database URL of {', '.join(STUDY_DATABASES)} (e.g. "
                             f"postgresql+psycopg2://user@host/optuna), got scheme {scheme or 'none'!r}")
        return value

    @field_validator("prune_after_folds")
    @classmethod
    def _within_folds(cls, value: int, info: ValidationInfo) -> int:
        folds = info.data.get("cv_folds")
        if folds is not None and value > folds:
            raise ValueError(f"must be at most cv_folds ({folds}): a trial has no more folds to score "
                             "(equal to cv_folds: no pruning)")
        return value

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for family in value or ():
            ModelConfig._known_family(family)
        return value

    @field_validator("search_space")
    @classmethod
    def _read_only(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        return MappingProxyType(dict(value))  # families and parameter names: checked by the loader

    @model_validator(mode="after")
    def _bounded(self) -> SearchPlan:
        if self.enabled and self.n_trials is None and self.timeout_seconds is None:
            raise ValueError("set n_trials or timeout_seconds (or both): the search needs a budget")
        return self


class ParamsFile(Frozen):
    """params.yaml: how the model is trained and when it replaces the serving one."""

    split: SplitConfig = SplitConfig()
    model: ModelConfig
    promotion: PromotionConfig
    monitoring: MonitoringPolicy = MonitoringPolicy()
    tuning: SearchPlan = SearchPlan(enabled=False)
    release: ReleasePlan = ReleasePlan()  # include/ml/release_settings.py
    leakage: LeakagePolicy = LeakagePolicy()


# --- everything, and each stage's view of it (built by the loader, not parsed: plain frozen dataclasses) -------

@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The three files of a config dir, with paths made absolute and the environment applied."""

    project_root: Path
    config_dir: Path
    artifacts_root: Path
    data_source: DataSourceConfig
    mlflow: MlflowConfig
    airflow: AirflowConfig
    deployment: DeploymentConfig
    signing: SigningConfig
    schema: SchemaConfig
    split: SplitConfig
    model: ModelConfig
    promotion: PromotionConfig
    config_hashes: Mapping[str, str]
    monitoring: MonitoringSources = MonitoringSources()
    monitoring_policy: MonitoringPolicy = MonitoringPolicy()
    serving_api_key: SecretStr | None = None  # from MLOPS_SERVING_API_KEY only, never from a file
    card: CardConfig = CardConfig()
    batch: BatchConfig = BatchConfig()
    tuning: SearchPlan = SearchPlan(enabled=False)
    release: ReleasePlan = ReleasePlan()
    leakage: LeakagePolicy = LeakagePolicy()

    @property
    def model_store(self) -> Path:
        """The local target's store (the loader always resolves its default)."""
        assert self.deployment.local.model_store is not None
        return self.deployment.local.model_store


@dataclass(frozen=True)
class IngestionConfig:
    source: DataSourceConfig
    expected_columns: tuple[str, ...]
    schema: SchemaConfig | None = None  # None (drafting): the file as it is, no rows or columns dropped


@dataclass(frozen=True)
class ValidationConfig:
    schema: SchemaConfig


@dataclass(frozen=True)
class TransformationConfig:
    schema: SchemaConfig
    split: SplitConfig
    families: tuple[str, ...] = ("random_forest",)  # what will be fitted: model.family first, then tuning's others
    schema_file: str = "schema.yaml"  # the file a memory-guard refusal names


@dataclass(frozen=True)
class TrainingConfig:
    schema: SchemaConfig
    model: ModelConfig
    mlflow: MlflowConfig
    tags: Mapping[str, str]
    schema_file: str = "schema.yaml"  # the file a memory-guard refusal names
    # params.yaml's model.calibration, apart from `model`: tuning replaces `model` with each trial's family and
    # hyperparameters and then its best, and the same calibration wraps every one of them.
    calibration: Literal["none", "sigmoid", "isotonic"] = "none"


@dataclass(frozen=True)
class TuningJob:
    training: TrainingConfig  # what each trial fits (model.hyperparameters apply when model.family is tried)
    tuning: SearchPlan
    metric: str  # promotion.metric: the gate's yardstick, cross-validated
    spaces: Mapping[str, Mapping[str, SearchParam]]  # each family searched -> its space


@dataclass(frozen=True)
class EvaluationConfig:
    schema: SchemaConfig
    promotion: PromotionConfig
    mlflow: MlflowConfig
    card: CardConfig = CardConfig()
    # release.strategy: direct moves the champion alias when the gate promotes; progressive the candidate alias
    release_strategy: Literal["direct", "progressive"] = "direct"
    leakage: LeakagePolicy = LeakagePolicy()  # the leakage warning, and whether it fails the gate


@dataclass(frozen=True)
class BatchPredictionConfig:
    schema: SchemaConfig
    source: DataSourceConfig  # the CSV format, size caps and S3 endpoint of inputs (uri: the configured one)
    batch: BatchConfig
    mlflow: MlflowConfig  # the registry holding mlflow.registered_model_name
    model_store: Path  # where the scoring version is exported to as a bundle, as `main.py export` does
    signing: SigningConfig


@dataclass(frozen=True)
class MonitorJob:
    schema: SchemaConfig
    promotion: PromotionConfig
    mlflow: MlflowConfig
    capture: MonitoringSources
    params: MonitoringPolicy
    artifacts_root: Path

    @property
    def experiment_name(self) -> str:
        """The monitoring experiment: one run per period next to the training runs' experiment."""
        return f"{self.mlflow.experiment_name}-monitoring"
