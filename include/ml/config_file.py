"""config.yaml as typed, immutable models: where the data comes from, where outputs go, how runs are tracked,
scheduled, deployed and signed.

`configuration.py` reads the file, applies the environment overrides and validates it into `ConfigFile`. Like every
config model (include/ml/frozen.py) they are frozen, strict and closed. Sections a project does not use are
optional; their defaults are the ones written here and documented in include/config/config.yaml and
docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from include.ml.frozen import Frozen

DEPLOY_TARGETS = ("none", "local", "ec2")


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
