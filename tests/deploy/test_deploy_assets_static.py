"""The EC2 release assets checked without starting a process (the rest: test_deploy_assets.py, integration).

- serving/requirements.txt: exactly the root pins, closed under dependencies.
- prediction-server.service: its stop timeout outlasts gunicorn's graceful timeout.
- the deployer's IAM policy: what the deploy task calls and no more, SendCommand limited to the document and the
  tagged fleet.
- serving/deploy/bootstrap.py: the setup script's AWS look-ups, against moto's in-process mock.
"""

from __future__ import annotations

import re
import runpy
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from include.release.targets.ec2 import SSM_DOCUMENT
from tests.support.assets import (
    DEPLOYER_POLICY,
    SERVING_REQUIREMENTS,
    UNIT,
    actions,
    check_s3_scope,
    ec2_config,
    pins,
    statements,
    unit_settings,
)
from tests.support.project import REPO

SERVING_ROOTS = {"flask", "gunicorn", "numpy", "pandas", "scikit-learn", "skops", "msgspec", "prometheus-client",
                 "boto3", "pyyaml"}


# --- serving/requirements.txt ------------------------------------------------------------------------------------

def test_serving_pins_are_exactly_the_root_pins() -> None:
    serving, root = pins(SERVING_REQUIREMENTS), pins(REPO / "requirements.txt")
    assert SERVING_ROOTS <= set(serving), f"missing: {sorted(SERVING_ROOTS - set(serving))}"
    differ = {name: (version, root.get(name)) for name, version in serving.items() if root.get(name) != version}
    assert not differ, f"serving pin != root pin (serving, root): {differ}"
    assert not {"mlflow", "mlflow-skinny", "apache-airflow", "great-expectations"} & set(serving)


def test_serving_pins_are_closed_under_dependencies() -> None:
    """Every dependency of a listed package (for this platform, no extras) is listed too: --no-deps is safe."""
    serving = pins(SERVING_REQUIREMENTS)
    missing: dict[str, list[str]] = {}
    for name, version in serving.items():
        dist = metadata.distribution(name)
        assert dist.version == version, f"installed {name} {dist.version} is not the pinned {version}"
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) not in serving:
                missing.setdefault(name, []).append(str(req))
    assert not missing, f"dependencies not in serving/requirements.txt: {missing}"


# --- prediction-server.service ----------------------------------------------------------------------------------

def test_unit_stop_timeout_outlasts_gunicorns_graceful_timeout(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # else loading the config makes a temp dir
    monkeypatch.delenv("SERVING_GRACEFUL_TIMEOUT", raising=False)
    conf = runpy.run_path(str(REPO / "serving" / "gunicorn.conf.py"))
    service = {key: values[-1] for key, values in unit_settings(UNIT.read_text())["Service"].items()}
    assert service["KillMode"] == "mixed"  # SIGTERM to the arbiter only; it drains its workers
    assert int(service["TimeoutStopSec"]) >= conf["graceful_timeout"] + 10


# --- IAM policies -----------------------------------------------------------------------------------------------

def test_deployer_policy_allows_what_the_deploy_task_calls_and_no_more() -> None:
    ec2 = ec2_config().deployment.ec2
    found = statements(DEPLOYER_POLICY)
    assert actions(found, "s3") == {"s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:AbortMultipartUpload"}
    check_s3_scope(found)
    assert actions(found, "ec2") == {"ec2:DescribeInstances"}
    assert actions(found, "ssm") == {"ssm:SendCommand", "ssm:GetCommandInvocation", "ssm:ListCommandInvocations"}
    send = [s for s in found if "ssm:SendCommand" in s["Action"]]
    assert all(s["Action"] == ["ssm:SendCommand"] for s in send)
    documents = [r for s in send for r in s["Resource"] if ":document/" in r]
    assert documents == [f"arn:aws:ssm:REGION::document/{SSM_DOCUMENT}"]
    for statement in send:
        if any(":instance/" in r for r in statement["Resource"]):
            assert statement["Resource"] == ["arn:aws:ec2:REGION:ACCOUNT_ID:instance/*"]
            assert statement["Condition"] == {"StringEquals": {f"aws:ResourceTag/{ec2.tag_key}": ec2.tag_value}}
        else:
            assert "Condition" not in statement and all(":document/" in r for r in statement["Resource"])
    wildcard = {a for s in found if "*" in s["Resource"] for a in s["Action"]}
    assert wildcard == {"ec2:DescribeInstances", "ssm:GetCommandInvocation", "ssm:ListCommandInvocations"}


# --- serving/deploy/bootstrap.py: the setup script's AWS look-ups, against moto ------------------------------------

def test_current_version_reads_the_pointer_object(mocked_aws: Any) -> None:
    from serving.deploy import bootstrap

    source = "s3://fleet-bucket/models/wine-quality"
    assert bootstrap.current_version(source) is None  # before the first deploy
    mocked_aws["s3"].put_object(Bucket="fleet-bucket", Key="models/wine-quality/CURRENT", Body=b"7\n")
    assert bootstrap.current_version(source + "/") == "7"
    mocked_aws["s3"].put_object(Bucket="fleet-bucket", Key="models/wine-quality/CURRENT", Body=b"../../etc\n")
    with pytest.raises(bootstrap.BootstrapError, match="invalid version name"):
        bootstrap.current_version(source)
    with pytest.raises(bootstrap.BootstrapError, match="cannot read"):
        bootstrap.current_version("s3://no-such-bucket/models/wine-quality")


def test_current_version_cli_exit_codes(mocked_aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from serving.deploy import bootstrap

    source = "s3://fleet-bucket/models/toy"
    assert bootstrap.main(["current-version", source]) == bootstrap.NO_POINTER
    mocked_aws["s3"].put_object(Bucket="fleet-bucket", Key="models/toy/CURRENT", Body=b"12")
    capsys.readouterr()
    assert bootstrap.main(["current-version", source]) == 0
    assert capsys.readouterr().out == "12\n"
    assert bootstrap.main(["current-version", "fleet-bucket/models/toy"]) == 1


@pytest.mark.parametrize("value, kind, error", [
    ("a-perfectly-fine-key-value", "String", "not a SecureString"),
    ("short", "SecureString", "16-4096 characters"),
    ("has a space and $(command)", "SecureString", "16-4096 characters"),
])
def test_api_key_refuses_plain_or_unsafe_values(mocked_aws: Any, value: str, kind: str, error: str) -> None:
    from serving.deploy import bootstrap

    mocked_aws["ssm"].put_parameter(Name="/k", Value=value, Type=kind)
    with pytest.raises(bootstrap.BootstrapError, match=re.escape(error)):
        bootstrap.api_key("/k")
    with pytest.raises(bootstrap.BootstrapError, match="cannot read SSM parameter"):
        bootstrap.api_key("/missing")
