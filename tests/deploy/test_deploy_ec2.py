"""The ec2 deploy target against moto in server mode, with real gunicorn servers standing in for the instances.

The Amazon provider's S3Hook, EC2Hook and SsmHook talk to moto over HTTP, and bundles are signed by a KMS key
there, as in production; the stand-in servers trust only that key's public half. The mlops-serving SSM document is
registered in moto as the operator registers it (docs/ec2.md). moto records SSM commands but does not run them,
so the runner below sends each command through SSM as production does, then does what the SSM Agent does: fetch
the document the command names from SSM, check the sent parameters against it and run its script on this
machine, against the stand-in server of that instance. Refresh, verify and rollback all go through the document.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from include.ml.configuration import ConfigurationManager
from include.ml.exceptions import DeploymentError
from include.release import deploy as deployment
from include.release.command_document import DOCUMENT_PATH, CommandDocument
from include.release.ports import CommandResult, Instance, ServingCommand
from include.release.rollout import activate_command, refresh_command
from include.release.targets.ec2 import SSM_DOCUMENT, Ec2Fleet, SsmRunner
from serving import pointer as pointers
from serving.signing import load_public_keys
from tests.support.attacks import tampered
from tests.support.bundles import register_toy_model
from tests.support.network import free_port, get_json
from tests.support.project import REPO
from tests.support.servers import Poller, PredictionServer

pytestmark = pytest.mark.integration
MODEL = "toy"
CONN_ID = "aws_moto"
LOGGERS = ("include.release.targets.ec2", "include.release.rollout")  # the SSM commands, the verified servers


class StandInSsmRunner(SsmRunner):
    """Sends through SSM (to moto), then runs the document it names, fetched back from SSM, with the parameters
    sent, locally in the instance's environment: what the SSM Agent on the instance does."""

    def __init__(self, config: Any, instances: dict[str, StandIn], endpoint: str,
                 after: dict[int, Any] | None = None) -> None:
        super().__init__(config, poll_seconds=0.1)
        self.instances, self.endpoint = instances, endpoint
        self.after = after or {}  # command number -> something to do once that command has run (an attacker)
        self.sent: list[dict[str, Any]] = []
        # Record the request as it goes on the wire (moto lists every instance on a command; see below).
        self.hook.conn.meta.events.register("provide-client-params.ssm.SendCommand",
                                            lambda params, **_: self.sent.append(params))

    def run(self, instance: Instance, command: ServingCommand, comment: str) -> CommandResult:
        command_id = self.send(instance, command, comment)
        assert self.wait(command_id, instance).exit_code == 0  # moto answers Success without running anything
        sent = self.sent[-1]
        document = CommandDocument.parse(self.hook.conn.get_document(Name=sent["DocumentName"])["Content"])
        rendered = document.render({name: value for name, [value] in sent["Parameters"].items()})
        stand_in = self.instances[instance.instance_id]
        done = subprocess.run(["bash", "-c", rendered.script], env={**stand_in.env(self.endpoint), **rendered.env},
                              capture_output=True, text=True, timeout=min(rendered.timeout_seconds, 120))
        if len(self.sent) in self.after:
            self.after.pop(len(self.sent))()
        return CommandResult(done.returncode, done.stdout, done.stderr)


@dataclass
class StandIn:
    """A real prediction server standing in for an instance, and a client polling it."""

    server: PredictionServer
    poller: Poller

    def version(self) -> str:
        return get_json(f"{self.server.url}/version")["version"]

    def env(self, endpoint: str) -> dict[str, str]:
        """What /etc/mlops/serving.env gives the instance's store commands."""
        return {**os.environ, "MLOPS_APP_DIR": str(REPO), "MLOPS_PYTHON": sys.executable,
                "SERVING_MODEL_STORE": str(self.server.store), "SERVING_URL": self.server.url,
                "SERVING_PUBLIC_KEY": self.server.env["SERVING_PUBLIC_KEY"], "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture
def aws(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST")).close()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"region_name": "us-east-1", "endpoint_url": s3_endpoint}}))
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", s3_endpoint)  # the signer's boto3 client: KMS on moto
    clients = {name: boto3.client(name, endpoint_url=s3_endpoint, region_name="us-east-1")
               for name in ("s3", "ec2", "ssm", "kms")}
    clients["s3"].create_bucket(Bucket="releases")
    clients["ssm"].create_document(Name=SSM_DOCUMENT, Content=DOCUMENT_PATH.read_text(), DocumentType="Command",
                                   DocumentFormat="JSON")  # as docs/ec2.md has the operator do
    yield clients


@pytest.fixture
def kms_key(aws: Any, tmp_path: Path) -> tuple[str, Path]:
    """An ECC_NIST_P256 signing key in (moto's) KMS, and its public key as a PEM file: what servers are given."""
    from cryptography.hazmat.primitives import serialization

    key = aws["kms"].create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    public = serialization.load_der_public_key(aws["kms"].get_public_key(KeyId=key)["PublicKey"])
    pem = tmp_path / "kms-public.pem"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pem


@pytest.fixture
def config(config_dir: Path, edit_yaml: Any, isolated_env: Path, aws: Any, kms_key: tuple[str, Path]) -> Any:
    def change(data: dict[str, Any]) -> None:
        data["signing"] = {"kms_key_id": kms_key[0], "kms_region": "us-east-1", "public_key": str(kms_key[1])}
        data["mlflow"]["registered_model_name"] = MODEL
        data["deployment"].update(target="ec2", verify_timeout_seconds=60)
        data["deployment"]["ec2"].update(aws_conn_id=CONN_ID, s3_bucket="releases", s3_prefix="models",
                                         tag_value="toy-server", instance_url="{tags[ServingUrl]}")

    edit_yaml(config_dir / "config.yaml", change)
    cm = ConfigurationManager(config_dir)
    from include.ml import tracking

    experiment = tracking.configure(cm.config.mlflow)
    assert register_toy_model(MODEL, experiment) == "1" and register_toy_model(MODEL, experiment, offset=100.0) == "2"
    return cm.config


@pytest.fixture
def fleet(aws: Any, kms_key: tuple[str, Path], tmp_path: Path) -> Iterator[dict[str, StandIn]]:
    """Three tagged instances in moto, each with a real gunicorn server on its own port and store, trusting
    only the KMS key's public half."""
    stand_ins: dict[str, StandIn] = {}
    with _servers(tmp_path, 3, kms_key[1]) as servers:
        for server in servers:
            launched = aws["ec2"].run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, TagSpecifications=[{
                "ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "toy-server"},
                                                     {"Key": "ServingUrl", "Value": server.url}]}])
            stand_ins[launched["Instances"][0]["InstanceId"]] = StandIn(server, Poller(server.url, pause=0.05))
        # an instance of another fleet, and a stopped one of ours: neither may be touched
        aws["ec2"].run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, TagSpecifications=[{
            "ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "other"}]}])
        stopped = aws["ec2"].run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, TagSpecifications=[{
            "ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "toy-server"}]}])
        aws["ec2"].stop_instances(InstanceIds=[stopped["Instances"][0]["InstanceId"]])
        yield stand_ins


class _servers:
    def __init__(self, tmp_path: Path, count: int, public_key: Path) -> None:
        self.servers = [PredictionServer(tmp_path / f"instance-{i}" / "models", free_port(), tmp_path / f"{i}.log",
                                         SERVING_PUBLIC_KEY=str(public_key)) for i in range(count)]

    def __enter__(self) -> list[PredictionServer]:
        for server in self.servers:
            server.start()
        try:
            for server in self.servers:
                server.ready()
        except BaseException:
            self.__exit__()
            raise
        return self.servers

    def __exit__(self, *exc: Any) -> None:
        for server in self.servers:
            server.__exit__(*exc)


def deploy(config: Any, version: str, fleet: dict[str, StandIn], endpoint: str, out: Path,
           after: dict[int, Any] | None = None) -> tuple[Any, Any]:
    runner = StandInSsmRunner(config.deployment.ec2, fleet, endpoint, after)
    return deployment.deploy(config, version, out, runner=runner), runner


def s3_text(aws: Any, key: str) -> str:
    return aws["s3"].get_object(Bucket="releases", Key=key)["Body"].read().decode()


def s3_pointer(aws: Any, fleet: dict[str, StandIn]) -> pointers.Pointer:
    """The models/toy/CURRENT object: a pointer signed by the KMS key (verified with its public half)."""
    body = aws["s3"].get_object(Bucket="releases", Key="models/toy/CURRENT")["Body"].read()
    return pointers.verify(body, load_public_keys(fleet_key(fleet)))


def store_pointer(stand_in: StandIn) -> pointers.Pointer:
    """An instance's CURRENT, verified with the key its server trusts."""
    current = pointers.current(stand_in.server.store, load_public_keys(Path(stand_in.server.env["SERVING_PUBLIC_KEY"])))
    assert current is not None
    return current


class Steps(logging.Handler):
    """Records the rollout's own log lines (Airflow's logging set-up keeps them from pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "Steps":
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)
            logging.getLogger(name).setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)


def test_rolling_deploy_to_the_fleet(config: Any, fleet: dict[str, StandIn], aws: Any, s3_endpoint: str,
                                     tmp_path: Path) -> None:
    first, _ = deploy(config, "1", fleet, s3_endpoint, tmp_path / "deploy-1")  # servers start with an empty store
    assert [i["changed"] for i in first.instances] == [True, True, True]
    s3_pointer_before = s3_pointer(aws, fleet)
    with ExitStack() as polling:
        for stand_in in fleet.values():
            polling.enter_context(stand_in.poller)
        # two instances at a time: both are refreshed, then both verified, then the third
        in_pairs = replace(config, deployment=config.deployment.model_copy(update={"batch_size": 2}))
        with Steps() as steps:
            result, runner = deploy(in_pairs, "2", fleet, s3_endpoint, tmp_path / "deploy-2")

    # the bundle and the pointer, read back from S3 and checked against the manifest
    manifest = s3_text(aws, "models/toy/2/MANIFEST.sha256")
    assert manifest.startswith("# model: toy\n# version: 2\n")  # the signed manifest names them
    listed = dict(reversed(line.split("  ", 1)) for line in manifest.splitlines() if not line.startswith("#"))
    keys = {o["Key"] for o in aws["s3"].list_objects_v2(Bucket="releases", Prefix="models/toy/2/")["Contents"]}
    assert keys == {f"models/toy/2/{name}" for name in listed} | {"models/toy/2/MANIFEST.sha256",
                                                                 "models/toy/2/MANIFEST.sig"}
    # signed by the KMS key: the signature names it and verifies with its public key
    signed = json.loads(s3_text(aws, "models/toy/2/MANIFEST.sig"))
    assert signed["key_id"] == next(iter(load_public_keys(fleet_key(fleet))))
    assert result.manifest_sha256 == hashlib.sha256(manifest.encode()).hexdigest()
    for name, digest in listed.items():
        body = aws["s3"].get_object(Bucket="releases", Key=f"models/toy/2/{name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest
    assert json.loads(s3_text(aws, "models/toy/2/bundle.json"))["version"] == "2"
    current = s3_pointer(aws, fleet)  # the signed pointer: this model, this version, this manifest, not a rollback
    assert (current.model, current.version, current.bundle_sha256, current.rollback) == \
        (MODEL, "2", result.manifest_sha256, False)
    assert current.sequence > s3_pointer_before.sequence

    # exactly one SSM command per instance, in fleet order, with the refresh command
    ordered = [i["instance_id"] for i in result.instances]
    a, b, c = ordered
    assert [("refresh" if "SSM command" in m else "verified", iid) for m in steps.messages for iid in ordered
            if iid in m and ("SSM command" in m or "serves version" in m)] == \
        [("refresh", a), ("refresh", b), ("verified", a), ("verified", b), ("refresh", c), ("verified", c)]
    assert sorted(ordered) == sorted(fleet) and len(ordered) == 3
    assert [p["InstanceIds"] for p in runner.sent] == [[iid] for iid in ordered]
    refresh = refresh_command("s3://releases/models/toy", "2", result.manifest_sha256, pointer=current.token)
    for params in runner.sent:
        assert params["DocumentName"] == SSM_DOCUMENT == "mlops-serving"
        assert params["Parameters"] == {"action": ["refresh"], **{k: [v] for k, v in refresh.parameters.items()},
                                        "executionTimeout": [str(config.deployment.ec2.command_timeout_seconds)]}
    # moto lists all instances on every command (a moto quirk), so it is checked through the comment
    recorded = sorted(aws["ssm"].list_commands()["Commands"], key=lambda c: c["RequestedDateTime"])[-3:]
    assert [c["Comment"] for c in recorded] == [f"refresh toy to version 2 on {iid}" for iid in ordered]
    assert all(c["DocumentName"] == SSM_DOCUMENT for c in recorded)

    # every server serves version 2; no client saw anything but a 200 during the rollout
    assert {iid: s.version() for iid, s in fleet.items()} == {iid: "2" for iid in fleet}
    for iid, stand_in in fleet.items():
        assert not stand_in.poller.failures() and stand_in.poller.versions() == {"1", "2"}, \
            (iid, stand_in.poller.outcomes)
        assert store_pointer(stand_in) == current  # every store holds the very pointer S3 holds
    assert json.loads((tmp_path / "deploy-2" / deployment.RESULT).read_text())["version"] == "2"

    again, _ = deploy(config, "2", fleet, s3_endpoint, tmp_path / "deploy-2-again")
    assert [i["changed"] for i in again.instances] == [False, False, False]  # a second refresh changes nothing


def test_failure_stops_the_rollout_and_rolls_back(config: Any, fleet: dict[str, StandIn], aws: Any,
                                                  s3_endpoint: str, tmp_path: Path) -> None:
    deploy(config, "1", fleet, s3_endpoint, tmp_path / "deploy-1")
    order = [i.instance_id for i in deployment_fleet(config)]
    # The second instance has a damaged copy of version 2 on disk: its refresh refuses to serve it.
    bad = fleet[order[1]].server.store / "2"
    bad.mkdir(parents=True)
    (bad / "MANIFEST.sha256").write_text("0" * 64 + "  bundle.json\n")
    (bad / "bundle.json").write_text("{}")
    with ExitStack() as polling, pytest.raises(DeploymentError) as failed:
        for stand_in in fleet.values():
            polling.enter_context(stand_in.poller)
        deploy(config, "2", fleet, s3_endpoint, tmp_path / "deploy-2")

    message = str(failed.value)
    assert f"instance {order[1]}: the refresh command failed" in message and "holds a different bundle" in message
    assert f"{order[0]} rolled back to version 1" in message
    assert {iid: s.version() for iid, s in fleet.items()} == {iid: "1" for iid in fleet}
    assert s3_pointer(aws, fleet).version == "1"  # new servers keep booting the old version
    # the instance that had switched went back through a new, signed rollback pointer
    assert store_pointer(fleet[order[0]]).rollback and store_pointer(fleet[order[0]]).version == "1"
    sent = [c["Comment"] for c in sorted(aws["ssm"].list_commands()["Commands"],
                                         key=lambda c: c["RequestedDateTime"])[3:]]
    assert sent == [f"refresh toy to version 2 on {order[0]}", f"refresh toy to version 2 on {order[1]}",
                    f"roll back to version 1 on {order[0]}"]  # the third instance was never touched
    rollback = sorted(aws["ssm"].list_commands()["Commands"], key=lambda c: c["RequestedDateTime"])[-1]
    assert rollback["DocumentName"] == SSM_DOCUMENT
    sent_back = pointers.peek(pointers.decode_token(rollback["Parameters"]["pointer"][0]))
    assert sent_back is not None and (sent_back.version, sent_back.rollback) == ("1", True)
    assert {k: v for k, v in rollback["Parameters"].items() if k != "executionTimeout"} == {
        "action": ["activate"], **{k: [v] for k, v in activate_command("1", sent_back.token).parameters.items()},
        "source": [""], "manifestSha256": [""]}  # the document's defaults, sent as they are
    for iid, stand_in in fleet.items():
        assert not stand_in.poller.failures(), (iid, stand_in.poller.outcomes)


def test_no_instances_changes_nothing(config: Any, aws: Any, s3_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="no servers to deploy to"):
        deploy(config, "2", {}, s3_endpoint, tmp_path / "deploy")
    assert "Contents" not in aws["s3"].list_objects_v2(Bucket="releases")


def runner_pointer(aws: Any) -> str:
    """The --pointer token of the last refresh command sent through SSM."""
    commands = sorted(aws["ssm"].list_commands()["Commands"], key=lambda c: c["RequestedDateTime"])
    return next(c for c in reversed(commands) if c["Comment"].startswith("refresh"))["Parameters"]["pointer"][0]


def deployment_fleet(config: Any) -> list[Instance]:
    return Ec2Fleet(config.deployment.ec2).instances()


def fleet_key(fleet: dict[str, StandIn]) -> Path:
    return Path(next(iter(fleet.values())).server.env["SERVING_PUBLIC_KEY"])


def test_a_bundle_someone_else_uploads_to_the_prefix_is_refused_everywhere(
        config: Any, fleet: dict[str, StandIn], aws: Any, s3_endpoint: str, tmp_path: Path) -> None:
    """Whoever can write the S3 prefix (but not sign with the KMS key) swaps version 2 for their own bundle
    while the rollout runs: the next instance refuses it, the rollout rolls back, and every instance refuses it
    later too, with or without the digest the deploy step sends. Its payload never runs."""
    deploy(config, "1", fleet, s3_endpoint, tmp_path / "deploy-1")
    order = [i.instance_id for i in deployment_fleet(config)]
    marker = tmp_path / "marker"

    def swap_in_a_hostile_bundle() -> None:
        good = tmp_path / "downloaded" / "2"
        for obj in aws["s3"].list_objects_v2(Bucket="releases", Prefix="models/toy/2/")["Contents"]:
            target = good / obj["Key"].removeprefix("models/toy/2/")
            target.parent.mkdir(parents=True, exist_ok=True)
            aws["s3"].download_file("releases", obj["Key"], str(target))
        hostile = tampered(good, tmp_path / "hostile" / "2", "other-key", marker, tmp_path / "attacker.key")
        for path in (p for p in hostile.rglob("*") if p.is_file()):
            aws["s3"].upload_file(str(path), "releases", f"models/toy/2/{path.relative_to(hostile).as_posix()}")

    with ExitStack() as polling, pytest.raises(DeploymentError) as failed:
        for stand_in in fleet.values():
            polling.enter_context(stand_in.poller)
        deploy(config, "2", fleet, s3_endpoint, tmp_path / "deploy-2", after={1: swap_in_a_hostile_bundle})

    assert f"instance {order[1]}: the refresh command failed" in str(failed.value)
    assert "is not the manifest this deploy published" in str(failed.value)
    assert f"{order[0]} rolled back to version 1" in str(failed.value)
    assert {iid: s.version() for iid, s in fleet.items()} == {iid: "1" for iid in fleet}
    assert s3_pointer(aws, fleet).version == "1"
    deploys_pointer = runner_pointer(aws)  # the signed pointer to version 2 the deploy sent: replayed
    for iid, stand_in in fleet.items():
        assert not stand_in.poller.failures(), (iid, stand_in.poller.outcomes)
        # as user-data's first boot runs it, with no digest: the pointer's bundle sha256 refuses the swapped bundle
        done = subprocess.run([sys.executable, "-m", "serving", "refresh", "--source", "s3://releases/models/toy",
                               "--version", "2", "--pointer", deploys_pointer], cwd=REPO,
                              env=stand_in.env(s3_endpoint), capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (iid, done.stdout)
        assert "is not the manifest this deploy published" in done.stdout \
            or "holds a different bundle" in done.stdout or "not above" in done.stdout, done.stdout
        assert stand_in.version() == "1"
    assert not marker.exists()


def test_a_hostile_parameter_is_never_sent(config: Any, fleet: dict[str, StandIn], aws: Any, s3_endpoint: str,
                                           tmp_path: Path) -> None:
    """Shell syntax in a parameter stops at the sending side, with a clear error: SSM gets no command at all (and
    would refuse it by the document's patterns; the stand-in agent above checks them as SSM does)."""
    marker = tmp_path / "pwned"
    runner = StandInSsmRunner(config.deployment.ec2, fleet, s3_endpoint)
    instance = deployment_fleet(config)[0]
    for command in (refresh_command("s3://releases/models/toy", f"2; touch {marker}", "0" * 64),
                    refresh_command(f"s3://releases/$(touch {marker})", "2", "0" * 64),
                    activate_command("1", pointer=f"x'\ntouch {marker}\n'")):
        with pytest.raises(DeploymentError, match="mlops-serving parameter .* does not match .*nothing was sent"):
            runner.run(instance, command, "attack")
    assert runner.sent == [] and aws["ssm"].list_commands()["Commands"] == [] and not marker.exists()


def test_a_rollback_is_a_new_signed_pointer_the_fleet_follows(config: Any, fleet: dict[str, StandIn], aws: Any,
                                                                s3_endpoint: str, tmp_path: Path) -> None:
    """What main.py --rollback and ml_rollback run after moving the alias: deploy the earlier version with
    rollback=True. Every server follows it back, and its store and S3 hold a rollback pointer with a higher
    sequence than the pointer it replaces; the replaced pointer is never followed again."""
    deploy(config, "1", fleet, s3_endpoint, tmp_path / "deploy-1")
    deploy(config, "2", fleet, s3_endpoint, tmp_path / "deploy-2")
    forward = s3_pointer(aws, fleet)
    with ExitStack() as polling:
        for stand_in in fleet.values():
            polling.enter_context(stand_in.poller)
        back = deployment.deploy(config, "1", tmp_path / "rollback",
                                 runner=StandInSsmRunner(config.deployment.ec2, fleet, s3_endpoint), rollback=True)
    assert [i["changed"] for i in back.instances] == [True, True, True]
    current = s3_pointer(aws, fleet)
    assert (current.version, current.rollback) == ("1", True) and current.sequence > forward.sequence
    for iid, stand_in in fleet.items():
        assert stand_in.version() == "1" and store_pointer(stand_in) == current
        assert not stand_in.poller.failures(), (iid, stand_in.poller.outcomes)
        # the forward pointer to version 2, replayed by whoever can write the store, is refused
        replay = subprocess.run([sys.executable, "-m", "serving", "activate", "2", "--pointer", forward.token],
                                cwd=REPO, env=stand_in.env(s3_endpoint), capture_output=True, text=True,
                                timeout=120)
        assert replay.returncode == 1 and "not above" in replay.stdout, replay.stdout
