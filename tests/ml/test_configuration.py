"""The configuration manager loads the three YAML files or fails naming file, key and expectation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from include.ml.configuration import ConfigurationManager
from include.ml.exceptions import ConfigError
from tests.support.project import REPO

PENGUINS = REPO / "examples" / "penguins"


def load(config_dir: Path, **env: str) -> ConfigurationManager:
    return ConfigurationManager(config_dir, env=env)


def test_default_config_loads_with_absolute_paths(config_dir: Path) -> None:
    config = load(config_dir).config
    assert config.schema.task == "regression" and config.schema.target == "quality"
    assert len(config.schema.features) == 11 and all(c.is_numeric for c in config.schema.features)
    assert config.model.family == "extra_trees"
    assert config.promotion.metric == "rmse" and config.promotion.higher_is_better is False
    assert Path(config.data_source.uri).is_absolute() and Path(config.data_source.uri).is_file()
    assert config.artifacts_root.is_absolute()
    assert config.mlflow.tracking_uri.startswith("sqlite:////")  # anchored at the project root
    assert set(config.config_hashes) == {"config.yaml", "schema.yaml", "params.yaml"}


def test_entities_are_immutable(config_dir: Path) -> None:
    config = load(config_dir).config
    with pytest.raises(ValidationError, match="frozen"):
        config.model.family = "elasticnet"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.model.hyperparameters["n_estimators"] = 1  # type: ignore[index]


def test_environment_overrides(config_dir: Path, tmp_path: Path) -> None:
    config = load(config_dir, MLOPS_SOURCE_URI="s3://bucket/data.csv", MLOPS_ARTIFACTS_ROOT=str(tmp_path / "a"),
                  MLOPS_TRACKING_URI="http://127.0.0.1:5000", MLOPS_ARTIFACT_LOCATION=str(tmp_path / "m")).config
    assert config.data_source.uri == "s3://bucket/data.csv"
    assert config.artifacts_root == tmp_path / "a"
    assert config.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert config.mlflow.artifact_location == (tmp_path / "m").as_uri()


def test_run_overrides_for_source_and_family(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(allowed_sources=["http://127.0.0.1:1/"]))
    cm = ConfigurationManager(config_dir, env={}, source_uri="http://127.0.0.1:1/x.csv", model_family="elasticnet")
    assert cm.config.data_source.uri == "http://127.0.0.1:1/x.csv"
    # the YAML's hyperparameters belong to extra_trees, so the override starts from defaults
    assert cm.config.model.family == "elasticnet" and dict(cm.config.model.hyperparameters) == {}
    same = ConfigurationManager(config_dir, env={}, model_family="extra_trees")
    assert same.config.model.hyperparameters["n_estimators"] == 200
    with pytest.raises(ConfigError, match="unknown model family 'svm'"):
        ConfigurationManager(config_dir, env={}, model_family="svm")


def test_per_stage_configs(config_dir: Path) -> None:
    cm = load(config_dir)
    assert cm.ingestion().expected_columns[-1] == "quality"
    training = cm.training()
    assert training.model.family == "extra_trees"
    assert {"git_sha", "config.params.yaml.sha256"} <= set(training.tags)


def expect_error(config_dir: Path, file: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config_dir)
    error = caught.value
    assert error.file.endswith(file), error
    assert error.key == key, error
    assert words in str(error), error


def test_malformed_yaml_names_file_and_line(config_dir: Path) -> None:
    (config_dir / "params.yaml").write_text("split:\n  test_size: 0.2\n   random_state: [1\n")
    with pytest.raises(ConfigError) as caught:
        load(config_dir)
    assert caught.value.file.endswith("params.yaml")
    assert "malformed YAML: line" in str(caught.value)


def test_missing_file(config_dir: Path) -> None:
    (config_dir / "schema.yaml").unlink()
    expect_error(config_dir, "schema.yaml", "", "file not found")


def test_missing_key(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d["mlflow"].pop("registered_model_name"))
    expect_error(config_dir, "config.yaml", "mlflow.registered_model_name", "missing required key")


def test_unknown_key(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["split"].update(shuffle=True))
    expect_error(config_dir, "params.yaml", "split.shuffle", "unknown key; expected one of: random_state, test_size")


def test_wrong_type(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["split"].update(test_size="a fifth"))
    expect_error(config_dir, "params.yaml", "split.test_size", "expected float, got str 'a fifth'")


def test_bool_is_not_a_number(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["split"].update(random_state=True))
    expect_error(config_dir, "params.yaml", "split.random_state", "expected int, got bool")


def test_unknown_model_family(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["model"].update(family="xgboost"))
    expect_error(config_dir, "params.yaml", "model.family",
                 "unknown model family 'xgboost'; expected one of elasticnet, random_forest, extra_trees, "
                 "hist_gradient_boosting")


def test_unknown_hyperparameter(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["model"]["hyperparameters"].update(learning_rate=0.1))
    expect_error(config_dir, "params.yaml", "model.hyperparameters.learning_rate",
                 "not a parameter of ExtraTreesRegressor")


def test_schema_without_target(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d.pop("target"))
    expect_error(config_dir, "schema.yaml", "target", "missing required key")


def test_target_not_a_column(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d.update(target="price"))
    expect_error(config_dir, "schema.yaml", "target", "target 'price' is not one of the columns")


def test_metric_must_fit_the_task(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["promotion"].update(metric="accuracy"))
    expect_error(config_dir, "params.yaml", "promotion.metric", "'accuracy' is not a regression metric")


def test_unknown_dtype(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"]["pH"].update(dtype="decimal"))
    expect_error(config_dir, "schema.yaml", "columns.pH.dtype",
                 "expected one of float, int, category, ordinal, datetime, string")


def test_min_above_max(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"]["pH"].update(min=5, max=1))
    expect_error(config_dir, "schema.yaml", "columns.pH", "min (5.0) is greater than max (1.0)")


def test_ordinal_needs_its_categories_in_order(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"].update(grade={"dtype": "ordinal"}))
    expect_error(config_dir, "schema.yaml", "columns.grade.categories", "an ordinal column needs categories")
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"].update(grade={"dtype": "ordinal",
                                                                               "allowed": ["lo", "hi"]}))
    expect_error(config_dir, "schema.yaml", "columns.grade.allowed", "lists its values in order under categories")


def test_regression_target_must_be_numeric(config_dir: Path, edit_yaml) -> None:
    def change(d: dict) -> None:
        d["columns"]["quality"] = {"dtype": "category", "allowed": ["good", "bad"]}
    edit_yaml(config_dir / "schema.yaml", change)
    expect_error(config_dir, "schema.yaml", "columns.quality.dtype", "a regression target must be float or int")


def test_separator_must_be_one_character(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(separator=";;"))
    expect_error(config_dir, "config.yaml", "data_source.separator", "expected a single character")


def test_schedule_must_be_cron_or_null(config_dir: Path, edit_yaml) -> None:
    assert load(config_dir).config.airflow.schedule == "0 2 * * *"
    edit_yaml(config_dir / "config.yaml", lambda d: d["airflow"].update(schedule=None))
    assert load(config_dir).config.airflow.schedule is None
    edit_yaml(config_dir / "config.yaml", lambda d: d["airflow"].update(schedule="nightly"))
    expect_error(config_dir, "config.yaml", "airflow.schedule", "expected a 5-field cron expression")


def test_batch_section_is_optional_with_checked_values(config_dir: Path, edit_yaml) -> None:
    batch = load(config_dir).config.batch
    assert (batch.schedule, batch.input_uri, batch.output_uri, batch.allowed_outputs, batch.id_column,
            batch.chunk_rows, batch.encoded_mb, batch.on_bad_rows) == (None, None, None, (), "id", 100_000, 64, "fail")
    edit_yaml(config_dir / "config.yaml", lambda d: d.pop("batch"))
    assert load(config_dir).config.batch == batch  # the reference YAML shows the defaults
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(batch={"schedule": "nightly"}))
    expect_error(config_dir, "config.yaml", "batch.schedule", "expected a 5-field cron expression")
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(batch={"chunk_rows": 0}))
    expect_error(config_dir, "config.yaml", "batch.chunk_rows", "expected at least 1")
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(batch={"encoded_mb": 0}))
    expect_error(config_dir, "config.yaml", "batch.encoded_mb", "expected at least 1")
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(batch={"on_bad_rows": "drop"}))
    expect_error(config_dir, "config.yaml", "batch.on_bad_rows", "expected one of fail, skip, flag, got str 'drop'")
    assert (batch.partitions, batch.partition_mb) == (1, None)
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(batch={"partitions": 0}))
    expect_error(config_dir, "config.yaml", "batch.partitions", "expected at least 1")
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(batch={"partition_mb": 0}))
    expect_error(config_dir, "config.yaml", "batch.partition_mb", "expected at least 1")


def test_ec2_deployment_needs_a_bucket(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d["deployment"].update(target="ec2"))
    expect_error(config_dir, "config.yaml", "deployment.ec2.s3_bucket", "required when deployment.target is ec2")


@pytest.mark.parametrize("change, key, problem", [
    (lambda d: d["deployment"].update(target="k8s"), "deployment.target", "expected one of none, local, ec2"),
    (lambda d: d["deployment"].update(batch_size=0), "deployment.batch_size", "at least 1"),
    (lambda d: d["deployment"]["ec2"].update(bucket="b"), "deployment.ec2.bucket", "unknown key"),
])
def test_bad_deployment_settings(config_dir: Path, edit_yaml, change, key: str, problem: str) -> None:
    edit_yaml(config_dir / "config.yaml", change)
    expect_error(config_dir, "config.yaml", key, problem)


def test_deployment_env_overrides(config_dir: Path) -> None:
    deployment = ConfigurationManager(config_dir, env={
        "MLOPS_DEPLOY_TARGET": "ec2", "MLOPS_S3_BUCKET": "releases", "MLOPS_MODEL_STORE": "/srv/models",
        "MLOPS_SERVING_URL": "http://127.0.0.1:9/"}).config.deployment
    assert (deployment.target, deployment.ec2.s3_bucket) == ("ec2", "releases")
    assert deployment.local.model_store == Path("/srv/models") and deployment.local.server_url == "http://127.0.0.1:9"
    assert deployment.ec2.source("wine") == "s3://releases/models/wine"


def test_only_the_essentials_are_required(config_dir: Path) -> None:
    """A config.yaml with the source and the model name; params.yaml with the family and the metric."""
    (config_dir / "config.yaml").write_text("data_source: {uri: data/wine-quality/winequality-red.csv, "
                                            "separator: ';'}\nmlflow: {registered_model_name: wine}\n")
    (config_dir / "params.yaml").write_text("model: {family: elasticnet}\npromotion: {metric: mae}\n")
    config = load(config_dir).config
    assert config.mlflow.experiment_name == "wine" and config.airflow.schedule == "0 2 * * *"
    assert (config.deployment.target, config.deployment.batch_size) == ("local", 1)
    assert config.model_store == config.project_root / "models" / "wine"  # one store per model name
    assert (config.split.test_size, config.split.random_state, config.promotion.min_improvement) == (0.2, 42, 0.001)


def test_unknown_nested_key_lists_the_valid_ones(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d["deployment"].update(model_alias="champion"))
    expect_error(config_dir, "config.yaml", "deployment.model_alias",
                 "unknown key; expected one of: batch_size, ec2, local, target, verify_timeout_seconds")


def test_column_errors_name_the_column(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"]["pH"].update(min="low"))
    expect_error(config_dir, "schema.yaml", "columns.pH.min", "expected a number for a float column, got str 'low'")
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"]["pH"].update(min=2, colour="red"))
    expect_error(config_dir, "schema.yaml", "columns.pH.colour",
                 "unknown key; expected one of: allowed, categories, cyclical, dtype,")


@pytest.mark.parametrize("ui_url", ["javascript:alert(document.cookie)", "JavaScript:alert(1)//http://x",
                                    " javascript:alert(1)", "data:text/html,<script>alert(1)</script>",
                                    "vbscript:msgbox(1)", "//evil.example/", "http://", "mlflow.internal:5000"])
def test_the_mlflow_ui_url_must_be_a_web_address(config_dir: Path, edit_yaml, ui_url: str) -> None:
    """Task links open mlflow.ui_url in the Airflow UI: a javascript: (or data:) address would run script there."""
    edit_yaml(config_dir / "config.yaml", lambda d: d["mlflow"].update(ui_url=ui_url))
    expect_error(config_dir, "config.yaml", "mlflow.ui_url", "expected an http:// or https:// address with a host")
    with pytest.raises(ConfigError, match=r"expected an http:// or https:// address.*\(from MLOPS_MLFLOW_UI_URL\)"):
        ConfigurationManager(config_dir, env={"MLOPS_MLFLOW_UI_URL": "javascript:alert(1)"})


def test_an_http_or_https_mlflow_ui_url_is_kept_without_its_trailing_slash(config_dir: Path, edit_yaml) -> None:
    for ui_url in ("https://mlflow.example.com/", "HTTP://10.0.0.5:5000"):
        edit_yaml(config_dir / "config.yaml", lambda d, url=ui_url: d["mlflow"].update(ui_url=url))
        assert load(config_dir).config.mlflow.ui_url == ui_url.rstrip("/")


def test_an_error_in_an_overridden_value_names_the_variable(config_dir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config_dir, MLOPS_DEPLOY_TARGET="k8s")
    assert caught.value.key == "deployment.target"
    assert "expected one of none, local, ec2, got str 'k8s' (from MLOPS_DEPLOY_TARGET)" in str(caught.value)


def test_every_override_in_the_table_reaches_its_key(config_dir: Path) -> None:
    from include.ml.configuration import ENV_OVERRIDES, read_config_file

    for variable, key in ENV_OVERRIDES.items():
        literal = {"MLOPS_DEPLOY_TARGET": "ec2", "MLOPS_RETRAIN_ON": "drift",
                   "MLOPS_MLFLOW_UI_URL": "http://mlflow.internal:5000"}
        value = literal.get(variable, f"/tmp/from-{variable.lower()}")
        env = {variable: value, "MLOPS_S3_BUCKET": "b"} if variable == "MLOPS_DEPLOY_TARGET" else {variable: value}
        config = read_config_file(config_dir, env).model_dump()
        for part in key.split("."):
            config = config[part]
        assert str(config).endswith(value), (variable, key, config)


def test_the_serving_api_key_comes_only_from_the_environment(config_dir: Path, edit_yaml) -> None:
    assert load(config_dir).config.serving_api_key is None
    key = load(config_dir, MLOPS_SERVING_API_KEY="s3cret").config.serving_api_key
    assert key is not None and key.get_secret_value() == "s3cret" and "s3cret" not in repr(key)
    edit_yaml(config_dir / "config.yaml", lambda d: d["deployment"].update(api_key="s3cret"))
    expect_error(config_dir, "config.yaml", "deployment.api_key", "unknown key")


def test_project_config_is_cached_until_the_file_or_environment_changes(config_dir: Path, edit_yaml,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from include.ml.configuration import project_config

    monkeypatch.delenv("MLOPS_SERVING_URL", raising=False)
    first = project_config(config_dir)
    assert project_config(config_dir) is first
    monkeypatch.setenv("MLOPS_SERVING_URL", "http://127.0.0.1:9")
    assert project_config(config_dir).deployment.local.server_url == "http://127.0.0.1:9"
    edit_yaml(config_dir / "config.yaml", lambda d: d["mlflow"].update(registered_model_name="other"))
    stat = (config_dir / "config.yaml").stat()
    os.utime(config_dir / "config.yaml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert project_config(config_dir).mlflow.registered_model_name == "other"


# --- a run's source (the trigger form's) against data_source.allowed_sources ----------------------------------

def test_by_default_a_run_may_only_name_the_configured_source(config_dir: Path) -> None:
    configured = ConfigurationManager(config_dir, env={}).config.data_source.uri
    for same in ("data/wine-quality/winequality-red.csv", configured, f"file://{configured}",
                 "data/wine-quality/../wine-quality/winequality-red.csv"):
        assert ConfigurationManager(config_dir, env={}, source_uri=same).config.data_source.uri.endswith(
            "winequality-red.csv")
    with pytest.raises(ConfigError) as refused:
        ConfigurationManager(config_dir, env={}, source_uri="/etc/passwd")
    assert refused.value.key == "data_source.allowed_sources"
    assert ("the run's source '/etc/passwd' is refused: it is not under any allowed source; allowed: "
            "data/wine-quality/winequality-red.csv (data_source.uri; list others in data_source.allowed_sources)"
            ) in str(refused.value)


def test_operator_settings_are_not_checked_against_the_list(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(allowed_sources=["s3://only/this/"]))
    env = {"MLOPS_SOURCE_URI": "s3://elsewhere/data.csv"}
    assert ConfigurationManager(config_dir, env=env).config.data_source.uri == "s3://elsewhere/data.csv"
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(allowed_sources=[]))
    same = ConfigurationManager(config_dir, env=env, source_uri="s3://elsewhere/data.csv")  # the default: uri
    assert same.config.data_source.uri == "s3://elsewhere/data.csv"
    with pytest.raises(ConfigError, match="allowed: s3://elsewhere/data.csv"):
        ConfigurationManager(config_dir, env=env, source_uri="s3://elsewhere/data.csv/other")


ALLOWED = ["s3://my-bucket/wine/", "https://data.example.org/exports/", "data/"]


@pytest.mark.parametrize("source", [
    "s3://my-bucket/wine/2024-06.csv",
    "s3://my-bucket/wine/monthly/2024-06.zip",
    "https://data.example.org/exports/wine.csv?signature=abc",
    "https://DATA.example.org:443/exports/wine.csv",  # the host's case and the default port do not matter
    "https://data.example.org/ex%70orts/wine.csv",  # nor percent-encoding
    "data/wine-quality/winequality-red.csv",
    "file://{root}/data/wine-quality/winequality-red.csv",
])
def test_sources_under_an_allowed_prefix_pass(config_dir: Path, edit_yaml, source: str) -> None:
    from include.ml.configuration import PROJECT_ROOT

    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(allowed_sources=ALLOWED))
    source = source.format(root=PROJECT_ROOT)
    assert ConfigurationManager(config_dir, env={}, source_uri=source).config.data_source.uri.endswith(
        source.rpartition("/")[2])


@pytest.mark.parametrize("source, reason", [
    ("s3://my-bucket/wine/../secret/keys.csv", "'..' path segment"),
    # S3 keys are literal: an escape, '.', '..' or '//' would be checked one way and read another (finding 9).
    ("s3://my-bucket/wine/%2e%2e/secret.csv", "holds a '%'"),
    ("s3://my-bucket/%77ine/data.csv", "holds a '%'"),
    ("s3://my-bucket/wine//data.csv", "empty path segment ('//')"),
    ("s3://my-bucket/wine/./data.csv", "'.' or '..' path segment"),
    ("s3://My-Bucket/wine/data.csv", "is not an S3 bucket name"),
    ("s3://my-bucket/wine-private/data.csv", "not under any allowed source"),  # a prefix by whole segments
    ("s3://my-bucket/data.csv", "not under any allowed source"),
    ("s3://other-bucket/wine/data.csv", "not under any allowed source"),
    ("https://data.example.org@evil.example/exports/x.csv", "credentials (user@host)"),
    ("http://data.example.org/exports/x.csv", "not under any allowed source"),  # scheme
    ("https://data.example.org:8443/exports/x.csv", "not under any allowed source"),  # port
    ("https://data.example.org.evil.example/exports/x.csv", "not under any allowed source"),  # host
    ("https://data.example.org/exports/..%2f..%2fadmin", "'..' path segment"),
    ("https://data.example.org/exports/a\tb.csv", "whitespace or control characters"),
    ("/data/wine/../../etc/passwd", "not under any allowed source"),
    ("data/../../../../etc/passwd", "not under any allowed source"),
    ("data/../include/config/config.yaml", "not under any allowed source"),
    ("file://data/x.csv", "a file:// URI must hold an absolute path"),
    ("ftp://data.example.org/exports/x.csv", "not under any allowed source"),
])
def test_sources_outside_the_list_fail_at_once(config_dir: Path, edit_yaml, source: str, reason: str) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(allowed_sources=ALLOWED))
    with pytest.raises(ConfigError) as refused:
        ConfigurationManager(config_dir, env={}, source_uri=source)
    message = str(refused.value)
    assert f"the run's source {source!r} is refused: " in message and reason in message
    assert "allowed: s3://my-bucket/wine/, https://data.example.org/exports/, data/" in message


def test_a_symlink_out_of_an_allowed_directory_is_refused(config_dir: Path, edit_yaml, tmp_path: Path) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text("a,b\n1,2\n")
    (inside / "link.csv").symlink_to(outside / "secret.csv")
    (inside / "real.csv").write_text("a,b\n1,2\n")
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(allowed_sources=[str(inside)]))
    assert ConfigurationManager(config_dir, env={}, source_uri=str(inside / "real.csv"))
    with pytest.raises(ConfigError, match="not under any allowed source"):
        ConfigurationManager(config_dir, env={}, source_uri=str(inside / "link.csv"))


def test_size_caps_are_checked_like_any_key(config_dir: Path, edit_yaml) -> None:
    source = load(config_dir).config.data_source
    assert (source.allowed_sources, source.max_bytes, source.max_uncompressed_bytes) == ((), 1 << 30, 1 << 30)
    assert source.max_compression_ratio == 100
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(max_bytes=0))
    expect_error(config_dir, "config.yaml", "data_source.max_bytes", "expected at least 1, got int 0")
    edit_yaml(config_dir / "config.yaml", lambda d: d["data_source"].update(max_bytes=10, allowed_sources="s3://b/"))
    expect_error(config_dir, "config.yaml", "data_source.allowed_sources", "expected a list")


@pytest.mark.parametrize(("column", "key", "problem"), [
    ({"dtype": "string"}, "columns.notes.dtype", "a string column is free text and cannot be a feature"),
    ({"dtype": "float", "role": "target"}, "columns.notes.role", "only the target ('quality') has role target"),
    ({"dtype": "float", "encoding": "target"}, "columns.notes.encoding", "encoding applies to category columns"),
    ({"dtype": "category", "encoding": "target", "max_categories": 5}, "columns.notes.max_categories",
     "max_categories applies to encoding: onehot"),
    ({"dtype": "datetime", "min": "last year"}, "columns.notes.min", "expected an ISO date or datetime"),
    ({"dtype": "datetime", "min": "2024-02-01", "max": "2024-01-01"}, "columns.notes", "is later than max"),
    ({"dtype": "int", "format": "%Y"}, "columns.notes.format", "format applies to datetime columns, not int"),
    ({"dtype": "ordinal", "categories": ["lo", "hi", "lo"]}, "columns.notes.categories", "lists a value twice"),
    ({"dtype": "float", "role": "label"}, "columns.notes.role", "expected one of feature, target, id, ignore"),
])
def test_column_rules_name_the_key(config_dir: Path, edit_yaml, column: dict, key: str, problem: str) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"].update(notes=column))
    expect_error(config_dir, "schema.yaml", key, problem)


def test_a_string_feature_is_refused_with_the_choices(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"].update(notes={"dtype": "string"}))
    with pytest.raises(ConfigError) as caught:
        load(config_dir)
    assert all(choice in caught.value.problem for choice in ("role: id", "role: ignore", "encoding: target"))
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"].update(notes={"dtype": "string", "role": "ignore"}))
    schema = load(config_dir).config.schema
    assert [c.name for c in schema.ignored] == ["notes"] and "notes" not in [c.name for c in schema.features]


def test_the_target_may_be_a_mapping_that_says_what_missing_values_do(config_dir: Path, edit_yaml) -> None:
    assert load(config_dir).config.schema.target_missing == "drop"  # the default
    edit_yaml(config_dir / "schema.yaml", lambda d: d.update(target={"name": "quality", "missing": "error"}))
    schema = load(config_dir).config.schema
    assert (schema.target, schema.target_missing) == ("quality", "error")
    edit_yaml(config_dir / "schema.yaml", lambda d: d.update(target={"name": "quality", "missing": "impute"}))
    expect_error(config_dir, "schema.yaml", "target.missing", "expected one of drop, error")


def test_the_target_cannot_be_an_id_and_ids_are_no_features(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d["columns"]["quality"].update(role="id"))
    expect_error(config_dir, "schema.yaml", "columns.quality.role", "the target column cannot have role id")
    edit_yaml(config_dir / "schema.yaml", lambda d: (d["columns"]["quality"].pop("role"),
                                                     d["columns"]["pH"].update(role="id")))
    schema = load(config_dir).config.schema
    assert [c.name for c in schema.ids] == ["pH"] and len(schema.features) == 10
    assert schema.feature_contract()["keys"] == ["pH"]


def test_an_unknown_schema_key_lists_the_keys_as_written(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "schema.yaml", lambda d: d.update(targets="quality"))
    expect_error(config_dir, "schema.yaml", "targets",
                 "expected one of: columns, columns_not_in_schema, min_rows, target, task")


def test_min_improvement_is_absolute_or_a_percentage_of_the_champion(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["promotion"].update(min_improvement="1%"))
    promotion = load(config_dir).config.promotion
    assert promotion.relative and promotion.min_improvement == "1%" and promotion.margin(0.5) == pytest.approx(0.005)
    edit_yaml(config_dir / "params.yaml", lambda d: d["promotion"].update(min_improvement=2))
    promotion = load(config_dir).config.promotion
    assert not promotion.relative and promotion.margin(1000.0) == 2.0


@pytest.mark.parametrize("value, got", [
    ("1", "got str '1'"),  # quoted: neither a number nor a percentage
    ("-2%", "got str '-2%'"),
    ("one%", "got str 'one%'"),
    (-0.5, "got float -0.5"),
    (True, "got bool True"),
    (None, "got null"),
])
def test_a_bad_min_improvement_says_what_is_expected(config_dir: Path, edit_yaml, value, got: str) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["promotion"].update(min_improvement=value))
    expect_error(config_dir, "params.yaml", "promotion.min_improvement",
                 f"expected a number >= 0 (absolute) or a percentage such as 1% (of the champion's value), {got}")


def test_every_classification_metric_may_be_the_gate_metric(tmp_path: Path, edit_yaml) -> None:
    shutil.copytree(PENGUINS, tmp_path / "penguins")
    for metric in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc", "log_loss", "brier_score"):
        edit_yaml(tmp_path / "penguins" / "params.yaml", lambda d, m=metric: d["promotion"].update(metric=m))
        assert load(tmp_path / "penguins").tuning().metric == metric
    edit_yaml(tmp_path / "penguins" / "params.yaml", lambda d: d["promotion"].update(metric="rmse"))
    expect_error(tmp_path / "penguins", "params.yaml", "promotion.metric",
                 "'rmse' is not a classification metric; expected one of accuracy, balanced_accuracy, f1_macro, "
                 "roc_auc, pr_auc, log_loss, brier_score")


def test_calibration_is_for_classifiers(config_dir: Path, tmp_path: Path, edit_yaml) -> None:
    shutil.copytree(PENGUINS, tmp_path / "penguins")
    assert load(tmp_path / "penguins").training().calibration == "none"  # the default
    edit_yaml(tmp_path / "penguins" / "params.yaml", lambda d: d["model"].update(calibration="isotonic"))
    assert load(tmp_path / "penguins").training().calibration == "isotonic"
    edit_yaml(tmp_path / "penguins" / "params.yaml", lambda d: d["model"].update(calibration="platt"))
    expect_error(tmp_path / "penguins", "params.yaml", "model.calibration",
                 "expected one of none, sigmoid, isotonic, got str 'platt'")
    edit_yaml(config_dir / "params.yaml", lambda d: d["model"].update(calibration="sigmoid"))
    expect_error(config_dir, "params.yaml", "model.calibration",
                 "'sigmoid' calibrates a classifier's probabilities; schema.yaml's task is regression: remove the key "
                 "or set it to none")
