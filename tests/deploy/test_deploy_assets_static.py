"""The EC2 release assets checked without starting a process (the rest: test_deploy_assets.py, integration).

- serving/requirements.txt: exactly the root pins, closed under dependencies, every pin with the sha256 of a wheel
  for each platform user-data.sh supports.
- prediction-server.service: its stop timeout outlasts gunicorn's graceful timeout.
- nginx-prediction-server.conf: the limits that keep slow clients away from gunicorn match the server's settings.
- the deployer's IAM policy: what the deploy task calls and no more, SendCommand limited to the mlops-serving
  document and the tagged fleet; AWS-RunShellScript and every other document denied (evaluated).
- who may write what in the bucket (all four policies, evaluated): the deployer only its model's bundles, the
  release publisher only the app releases, the instances only their model's prediction capture files.
- serving/deploy/bootstrap.py: the setup script's AWS look-ups, against moto's in-process mock.
"""

from __future__ import annotations

import json
import re
import runpy
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from include.release.targets.ec2 import SSM_DOCUMENT
from serving.s3_uri import parse_s3_uri
from tests.support.assets import (
    BUCKET_POLICY,
    DEPLOYER_POLICY,
    INSTANCE_POLICY,
    NGINX_TEMPLATE,
    PUBLISHER_POLICY,
    RELEASE_PREFIX,
    REQUIREMENTS_WHEELS,
    SERVING_REQUIREMENTS,
    UNIT,
    actions,
    allowed,
    allowed_on_all,
    check_s3_scope,
    ec2_config,
    pins,
    render_policy,
    requirements,
    statements,
    unit_settings,
)
from tests.support.project import REPO

SERVING_ROOTS = {"flask", "gunicorn", "numpy", "pandas", "scikit-learn", "skops", "msgspec", "prometheus-client",
                 "boto3", "pyyaml", "onnxruntime", "shap"}


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


def test_every_serving_pin_carries_the_hashes_of_its_wheels() -> None:
    """pip install --require-hashes (user-data.sh) installs only files listed here: every pin has hashes, and they
    are the wheels serving/deploy/requirements-wheels.json names (python -m serving.deploy.requirements_hashes)."""
    found = requirements(SERVING_REQUIREMENTS)
    unhashed = sorted(name for name, (_, hashes) in found.items() if not hashes)
    assert not unhashed, f"pins without --hash: {unhashed}"
    for name, (_, hashes) in found.items():
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes) and len(set(hashes)) == len(hashes), name
    wheels = json.loads(REQUIREMENTS_WHEELS.read_text())["wheels"]
    listed = {canonicalize_name(spec.partition("==")[0]): (spec.partition("==")[2], files)
              for spec, files in wheels.items()}
    assert set(listed) == set(found)
    for name, (version, hashes) in found.items():
        assert listed[name][0] == version, name
        assert sorted(set(listed[name][1].values())) == sorted(hashes), f"{name}: the hashes are not its wheels'"
        for filename in listed[name][1]:
            wheel_name, wheel_version, _, _ = parse_wheel_filename(filename)
            assert (wheel_name, str(wheel_version)) == (name, version), filename


def _host_tags(python: tuple[int, int], arch: str, glibc_minor: int) -> set[Tag]:
    """What pip on such a host installs: manylinux tags up to its glibc (aliases included), abi3, pure Python."""
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 4, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return set(cpython_tags(python, platforms=platforms)) | set(compatible_tags(python, platforms=platforms))


# The hosts user-data.sh supports (its python_for), with their glibc.
HOSTS = {"amzn-2023": ((3, 11), 34), "ubuntu-22.04": ((3, 11), 35), "ubuntu-24.04": ((3, 12), 39)}


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_every_pin_has_a_hashed_wheel_for_each_supported_host(host: str, arch: str) -> None:
    python, glibc = HOSTS[host]
    tags = _host_tags(python, arch, glibc)
    wheels = json.loads(REQUIREMENTS_WHEELS.read_text())["wheels"]
    missing = [spec for spec, files in wheels.items() if not any(parse_wheel_filename(f)[3] & tags for f in files)]
    assert not missing, f"no hashed wheel for {host} {arch}: {missing}"


# --- prediction-server.service ----------------------------------------------------------------------------------

def test_unit_stop_timeout_outlasts_gunicorns_graceful_timeout(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # else loading the config makes a temp dir
    monkeypatch.delenv("SERVING_GRACEFUL_TIMEOUT", raising=False)
    conf = runpy.run_path(str(REPO / "serving" / "gunicorn.conf.py"))
    service = {key: values[-1] for key, values in unit_settings(UNIT.read_text())["Service"].items()}
    assert service["KillMode"] == "mixed"  # SIGTERM to the arbiter only; it drains its workers
    assert int(service["TimeoutStopSec"]) >= conf["graceful_timeout"] + 10


# --- nginx-prediction-server.conf -------------------------------------------------------------------------------

def nginx_directives(text: str) -> dict[str, list[str]]:
    """directive -> its values, over the template's active lines (not the #TLS#/#REDIRECT#/... ones)."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip().rstrip(";")
        if line and not line.endswith(("{", "}")):
            name, _, value = line.partition(" ")
            found.setdefault(name, []).append(value.strip())
    return found


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def test_nginx_front_limits_match_the_server() -> None:
    """Slow clients are dropped by nginx, bodies above the server's limit stop at nginx, gunicorn gets whole
    requests and gives whole responses, and the timeouts line up with gunicorn's."""
    from serving.settings import Settings

    server = Settings.from_env({})
    conf = nginx_directives(NGINX_TEMPLATE.read_text())
    size = re.fullmatch(r"(\d+)([km]?)", conf["client_max_body_size"][0]).groups()
    assert int(size[0]) * {"": 1, "k": 1024, "m": 1024 ** 2}[size[1]] == server.max_body_bytes
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert 0 < _seconds(conf[name][0]) <= 15, name
    # Where no nginx is, gunicorn drops a slow request head after the same time (serving/request_heads.py).
    assert _seconds(conf["client_header_timeout"][0]) == server.head_timeout
    upstream_idle, client_idle = (_seconds(v) for v in conf["keepalive_timeout"])  # upstream {} first
    assert client_idle > 60  # above an ALB's idle timeout
    assert upstream_idle < server.keepalive  # nginx drops idle upstream connections before gunicorn does
    assert conf["proxy_buffering"] == ["on"] and conf["proxy_request_buffering"] == ["on"]
    assert _seconds(conf["proxy_read_timeout"][0]) > server.timeout  # gunicorn times out first, with an answer
    assert conf["proxy_pass"] == ["http://prediction_server"] and conf["server"] == ["@BACKEND@"]
    assert any(v.startswith("prediction_per_client ") for v in conf["limit_conn"])
    assert conf["server_tokens"] == ["off"]


# --- IAM policies -----------------------------------------------------------------------------------------------

def test_deployer_policy_allows_what_the_deploy_task_calls_and_no_more() -> None:
    ec2 = ec2_config().deployment.ec2
    found = statements(DEPLOYER_POLICY)
    assert actions(found, "s3") == {"s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:AbortMultipartUpload"}
    check_s3_scope(found, ["arn:aws:s3:::BUCKET/PREFIX/MODEL_NAME/*"], ["PREFIX/MODEL_NAME/*"])
    denied = [s for s in found if s["Effect"] == "Deny"]
    assert [(s["Action"], s.get("Resource")) for s in denied if s["Action"] != ["ssm:SendCommand"]] == \
        [(["s3:*"], [f"arn:aws:s3:::BUCKET/{RELEASE_PREFIX.split('/')[0]}/*"])]
    assert actions(found, "ec2") == {"ec2:DescribeInstances"}
    assert actions(found, "ssm") == {"ssm:SendCommand", "ssm:GetCommandInvocation", "ssm:ListCommandInvocations"}
    assert SSM_DOCUMENT == "mlops-serving"
    send = [s for s in found if "ssm:SendCommand" in s["Action"] and s["Effect"] == "Allow"]
    assert all(s["Action"] == ["ssm:SendCommand"] for s in send)
    documents = [r for s in send for r in s["Resource"] if ":document/" in r]
    assert documents == [f"arn:aws:ssm:REGION:ACCOUNT_ID:document/{SSM_DOCUMENT}"]  # the account's own, by name
    for statement in send:
        if any(":instance/" in r for r in statement["Resource"]):
            assert statement["Resource"] == ["arn:aws:ec2:REGION:ACCOUNT_ID:instance/*"]
            assert statement["Condition"] == {"StringEquals": {f"aws:ResourceTag/{ec2.tag_key}": ec2.tag_value}}
        else:
            assert "Condition" not in statement and all(":document/" in r for r in statement["Resource"])
    wildcard = {a for s in found if s["Effect"] == "Allow" and "*" in s["Resource"] for a in s["Action"]}
    assert wildcard == {"ec2:DescribeInstances", "ssm:GetCommandInvocation", "ssm:ListCommandInvocations"}
    # and every other document is denied outright, whatever another policy allows
    assert [s["NotResource"] for s in denied if "NotResource" in s] == [[
        f"arn:aws:ssm:REGION:ACCOUNT_ID:document/{SSM_DOCUMENT}", "arn:aws:ec2:REGION:ACCOUNT_ID:instance/*"]]


def test_publisher_and_instance_policies_are_scoped() -> None:
    publisher = statements(PUBLISHER_POLICY)
    assert actions(publisher, "s3") == {"s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:AbortMultipartUpload"}
    check_s3_scope(publisher, [f"arn:aws:s3:::BUCKET/{RELEASE_PREFIX}/*"], [f"{RELEASE_PREFIX}/*"])
    assert {a.partition(":")[0] for s in publisher for a in s["Action"]} == {"s3"}
    instance = statements(INSTANCE_POLICY)
    assert actions(instance, "s3") == {"s3:GetObject", "s3:ListBucket", "s3:PutObject"}
    check_s3_scope(instance, ["arn:aws:s3:::BUCKET/PREFIX/MODEL_NAME/*", f"arn:aws:s3:::BUCKET/{RELEASE_PREFIX}/*",
                              "arn:aws:s3:::BUCKET/PREFIX/capture/MODEL_NAME/*"], ["PREFIX/MODEL_NAME/*"])
    puts = [s for s in instance if "s3:PutObject" in s["Action"]]  # capture shipping: PutObject there, nothing else
    assert [(s["Action"], s["Resource"]) for s in puts] == [(["s3:PutObject"],
                                                             ["arn:aws:s3:::BUCKET/PREFIX/capture/MODEL_NAME/*"])]
    assert all(s["Effect"] == "Deny" and s["Principal"] == "*" for s in statements(BUCKET_POLICY))  # only takes away


# Who may do what, evaluated with the placeholders filled in as docs/ec2.md's sed does.
ACCOUNT = "123456789012"
PUBLISHER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/release-publisher"
DEPLOYER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/airflow"
INSTANCE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/prediction-server"
KMS_KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_WRITES = ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl", "s3:RestoreObject",
                "s3:PutObjectTagging")


@pytest.fixture(scope="module")
def layout() -> dict[str, Any]:
    config = ec2_config()
    ec2, model = config.deployment.ec2, config.mlflow.registered_model_name
    bucket = ec2.s3_bucket or "my-mlops-bucket"
    values = {"BUCKET": bucket, "PREFIX": ec2.s3_prefix.strip("/"), "MODEL_NAME": model, "REGION": "us-east-1",
              "ACCOUNT_ID": ACCOUNT, "RELEASE_PUBLISHER_ROLE": PUBLISHER_ROLE.rpartition("/")[2],
              "KMS_KEY_ID": KMS_KEY_ID}
    source = ec2.model_copy(update={"s3_bucket": bucket}).source(model)  # where the deploy task writes
    s3 = parse_s3_uri(source)
    bundles = f"arn:aws:s3:::{s3.bucket}/{s3.key}"
    arn = f"arn:aws:s3:::{bucket}"
    policies = {name: render_policy(path, values) for name, path in (
        ("deployer", DEPLOYER_POLICY), ("publisher", PUBLISHER_POLICY), ("instance", INSTANCE_POLICY),
        ("bucket", BUCKET_POLICY))}
    return {
        "policies": policies, "bucket": arn, "principals": {
            "deployer": (policies["deployer"], DEPLOYER_ROLE),
            "publisher": (policies["publisher"], PUBLISHER_ROLE),
            "instance": (policies["instance"], INSTANCE_ROLE)},
        "keys": {
            "bundle": f"{bundles}/12/model/model.skops", "manifest": f"{bundles}/12/MANIFEST.sha256",
            "pointer": f"{bundles}/CURRENT",
            "release": f"{arn}/{RELEASE_PREFIX}/app-0123abc.tar.gz",
            "old release location": f"{arn}/{values['PREFIX']}/app/release.tar.gz",
            "another model": f"{arn}/{values['PREFIX']}/another-model/1/MANIFEST.sha256",
            "capture": f"{arn}/{values['PREFIX']}/capture/{model}/2026-01-31/host-1-20260131T000000Z-000001.jsonl.gz",
            "another model's capture": f"{arn}/{values['PREFIX']}/capture/another-model/2026-01-31/x.jsonl.gz",
            "elsewhere": f"{arn}/notes.txt", "another bucket": f"arn:aws:s3:::other-bucket/{RELEASE_PREFIX}/x.tar.gz"}}


def can(layout: dict[str, Any], who: str, action: str, key: str) -> bool:
    policy, role = layout["principals"][who]
    return allowed([policy, layout["policies"]["bucket"]], action, layout["keys"][key], {"aws:PrincipalArn": role})


# principal -> (keys it may PutObject, keys it may GetObject)
ACCESS = {
    "deployer": ({"bundle", "manifest", "pointer"}, {"bundle", "manifest", "pointer"}),
    "publisher": ({"release"}, {"release"}),
    "instance": ({"capture"}, {"bundle", "manifest", "pointer", "release"}),
}


@pytest.mark.parametrize("who", sorted(ACCESS))
def test_who_writes_and_reads_what(layout: dict[str, Any], who: str) -> None:
    """The deployer writes only its model's bundles and pointer (never the app release that instances run as
    root), the release publisher only the release prefix, the instances only their model's capture files (shipped
    by capture-ship.service; never read back, deleted or overwritten elsewhere)."""
    writes, reads = ACCESS[who]
    for key in layout["keys"]:
        assert can(layout, who, "s3:PutObject", key) == (key in writes), (who, "PutObject", key)
        assert can(layout, who, "s3:GetObject", key) == (key in reads), (who, "GetObject", key)
        for action in OTHER_WRITES:
            assert not can(layout, who, action, key), (who, action, key)
    for action in ("s3:PutBucketPolicy", "s3:PutBucketVersioning", "s3:DeleteBucket", "s3:PutLifecycleConfiguration"):
        assert not allowed([layout["principals"][who][0]], action, layout["bucket"]), (who, action)


def test_release_writes_are_denied_even_to_a_broader_grant(layout: dict[str, Any]) -> None:
    """The deployer's own Deny and the bucket policy both stop a release write that another policy would allow
    (say an s3:PutObject on the whole bucket, attached to the Airflow role by mistake)."""
    broad = [{"Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObjectVersion"],
              "Resource": [layout["bucket"] + "/*"]}]
    release, bucket_policy = layout["keys"]["release"], layout["policies"]["bucket"]
    assert allowed([broad], "s3:PutObject", release)  # the broad grant alone would allow it
    assert not allowed([layout["policies"]["deployer"], broad], "s3:PutObject", release)  # the deployer's Deny
    for action in ("s3:PutObject", "s3:DeleteObjectVersion"):  # the bucket policy, for any role but the publisher
        assert not allowed([broad, bucket_policy], action, release, {"aws:PrincipalArn": DEPLOYER_ROLE}), action
    assert allowed([broad, bucket_policy], "s3:PutObject", release, {"aws:PrincipalArn": PUBLISHER_ROLE})
    assert not allowed([broad, bucket_policy], "s3:PutObject", release,
                       {"aws:PrincipalArn": PUBLISHER_ROLE, "aws:SecureTransport": "false"})  # TLS only


def test_listing_is_limited_to_each_roles_prefix(layout: dict[str, Any]) -> None:
    bucket = layout["bucket"]
    models = layout["keys"]["pointer"].removeprefix(bucket + "/").rpartition("/")[0]
    for who, mine, other in (("deployer", models, RELEASE_PREFIX), ("instance", models, RELEASE_PREFIX),
                             ("publisher", RELEASE_PREFIX, models)):
        policy = layout["principals"][who][0]
        assert allowed([policy], "s3:ListBucket", bucket, {"s3:prefix": f"{mine}/"}), who
        assert not allowed([policy], "s3:ListBucket", bucket, {"s3:prefix": f"{other}/"}), who
        assert not allowed([policy], "s3:ListBucket", bucket, {"s3:prefix": ""}), who


# SendCommand as the deployer, on one instance: the document's ARN, and the instance's with its tags.
INSTANCE_ARN = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0123456789abcdef0"
SERVING_DOCUMENT_ARN = f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/mlops-serving"
SHELL_DOCUMENTS = ("AWS-RunShellScript", "AWS-RunPowerShellScript")


def send_command(policies: list[list[dict[str, Any]]], document: str, tags: dict[str, str]) -> bool:
    return allowed_on_all(policies, "ssm:SendCommand", {
        document: {}, INSTANCE_ARN: {f"aws:ResourceTag/{key}": value for key, value in tags.items()}})


def test_the_deployer_cannot_send_a_shell_to_the_fleet(layout: dict[str, Any]) -> None:
    """Finding 2: the deployer role could send AWS-RunShellScript (root on every server). Now only the account's
    mlops-serving document goes through, to tagged servers only; a shell document is denied, in any region, even
    when another policy attached to the role by mistake allows SendCommand on everything."""
    ec2 = ec2_config().deployment.ec2
    fleet_tag, deployer = {ec2.tag_key: ec2.tag_value}, layout["policies"]["deployer"]
    broad = [{"Effect": "Allow", "Action": ["ssm:SendCommand"], "Resource": ["*"]}]
    assert send_command([broad], f"arn:aws:ssm:us-east-1::document/{SHELL_DOCUMENTS[0]}", fleet_tag)  # alone: yes
    for shell in SHELL_DOCUMENTS:
        for region in ("us-east-1", "eu-west-1"):
            for policies in ([deployer], [deployer, broad]):
                assert not send_command(policies, f"arn:aws:ssm:{region}::document/{shell}", fleet_tag), \
                    (shell, region, len(policies))
    assert send_command([deployer], SERVING_DOCUMENT_ARN, fleet_tag)  # what the deploy task sends
    assert not send_command([deployer], SERVING_DOCUMENT_ARN, {ec2.tag_key: "bastion"})
    assert not send_command([deployer], SERVING_DOCUMENT_ARN, {})
    others = [f"arn:aws:ssm:us-east-1::document/{name}" for name in (
        "AWS-RunRemoteScript", "AWS-ApplyAnsiblePlaybooks", "AWS-RunDocument", "AWS-ConfigureDocker")]
    others += ["arn:aws:ssm:us-east-1:999999999999:document/mlops-serving",  # same name, shared by another account
               f"arn:aws:ssm:eu-west-1:{ACCOUNT}:document/mlops-serving",  # the name in another region
               f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/mlops-serving-debug"]
    for document in others:
        assert not send_command([deployer, broad], document, fleet_tag), document
    for action in ("ssm:StartSession", "ssm:CreateDocument", "ssm:UpdateDocument", "ssm:UpdateDocumentDefaultVersion",
                   "ssm:SendAutomationSignal", "ssm:StartAutomationExecution", "ssm:CreateAssociation"):
        assert not allowed([deployer], action, SERVING_DOCUMENT_ARN), action
        assert not allowed([deployer], action, INSTANCE_ARN), action


# --- serving/deploy/bootstrap.py: the setup script's AWS look-ups, against moto ------------------------------------

def test_current_pointer_is_verified_as_a_server_verifies_it(mocked_aws: Any, tmp_path: Path) -> None:
    """A new instance's first boot follows <model>/CURRENT only if it is a pointer signed by a trusted key for
    this model and a plain version name: whoever can write the S3 object cannot pick what it serves."""
    from serving.deploy import bootstrap
    from tests.support.pointers import attacker_key, pointer_for, signed_statement
    from tests.support.signing import trusted_keys

    source, key = "s3://fleet-bucket/models/wine-quality", "models/wine-quality/CURRENT"
    assert bootstrap.current_pointer(source, trusted_keys(), "wine-quality") is None  # before the first deploy
    good = pointer_for(tmp_path, "7", model="wine-quality", bundle_sha256="a" * 64)
    mocked_aws["s3"].put_object(Bucket="fleet-bucket", Key=key, Body=good.envelope)
    assert bootstrap.current_pointer(source + "/", trusted_keys(), "wine-quality") == good
    for body, error in (
            (b"7\n", "is not a signed pointer"),
            (b"../../etc\n", "is not a signed pointer"),
            (signed_statement(model="wine-quality", version="../../etc"), "names no version directory"),
            (pointer_for(tmp_path, "7", model="another-model", bundle_sha256="a" * 64).envelope,
             "but this server serves 'wine-quality'"),
            (pointer_for(tmp_path, "7", model="wine-quality", bundle_sha256="a" * 64,
                         private_key=attacker_key(tmp_path)).envelope, "not trusted here")):
        mocked_aws["s3"].put_object(Bucket="fleet-bucket", Key=key, Body=body)
        with pytest.raises(bootstrap.BootstrapError, match=re.escape(error)):
            bootstrap.current_pointer(source, trusted_keys(), "wine-quality")
    with pytest.raises(bootstrap.BootstrapError, match="cannot read"):
        bootstrap.current_pointer("s3://no-such-bucket/models/wine-quality", trusted_keys(), "wine-quality")


def test_current_pointer_cli_exit_codes(mocked_aws: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from serving.deploy import bootstrap
    from tests.support.pointers import pointer_for
    from tests.support.signing import public_key_file

    source = "s3://fleet-bucket/models/toy"
    args = ["current-pointer", source, "--public-key", str(public_key_file()), "--model", "toy"]
    assert bootstrap.main(args) == bootstrap.NO_POINTER
    good = pointer_for(tmp_path, "12", model="toy", bundle_sha256="a" * 64)
    mocked_aws["s3"].put_object(Bucket="fleet-bucket", Key="models/toy/CURRENT", Body=good.envelope)
    capsys.readouterr()
    assert bootstrap.main(args) == 0
    assert capsys.readouterr().out == f"12 {good.token}\n"  # what user-data.sh passes to refresh
    mocked_aws["s3"].put_object(Bucket="fleet-bucket", Key="models/toy/CURRENT", Body=b"12")
    assert bootstrap.main(args) == 1  # a plain version is no pointer
    assert bootstrap.main([*args[:1], "fleet-bucket/models/toy", *args[2:]]) == 1


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


def test_only_the_deployer_signs_and_only_with_the_release_key(layout: dict[str, Any]) -> None:
    """kms:Sign on the configured key, with the algorithm servers verify; no other key, no other principal."""
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{KMS_KEY_ID}"
    context = {"kms:SigningAlgorithm": "ECDSA_SHA_256"}
    deployer, publisher, instance = (layout["principals"][who][0] for who in ("deployer", "publisher", "instance"))
    assert allowed([deployer], "kms:Sign", key, context) and allowed([deployer], "kms:GetPublicKey", key)
    assert not allowed([deployer], "kms:Sign", key, {"kms:SigningAlgorithm": "ECDSA_SHA_512"})
    assert not allowed([deployer], "kms:Sign", f"arn:aws:kms:us-east-1:{ACCOUNT}:key/another-key", context)
    assert not allowed([publisher], "kms:Sign", key, context) and not allowed([instance], "kms:Sign", key, context)
