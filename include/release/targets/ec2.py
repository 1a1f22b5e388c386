"""The `ec2` deployment target through the Airflow Amazon provider: S3Hook, EC2Hook and SsmHook.

Credentials come from the Airflow connection named in deployment.ec2.aws_conn_id (an instance role, or the
connection's own settings); nothing here reads keys. The provider's hooks are imported when a target is built,
so nothing Airflow is loaded where this target is not used.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from include.ml.config_file import Ec2TargetConfig
from include.ml.exceptions import DeploymentError
from include.release.command_document import DOCUMENT_NAME, CommandDocument, document_parameters
from include.release.ports import CommandResult, Instance, ServingCommand
from serving.store import MANIFEST, SIGNATURE

log = logging.getLogger(__name__)
SSM_DOCUMENT = DOCUMENT_NAME  # the operator's own Command document (docs/ec2.md); never AWS-RunShellScript
_TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut"}


class S3BundleStore:
    """s3://<bucket>/<prefix>/<model>/<version>/ bundles and the <model>/CURRENT object: a signed pointer
    (serving/pointer.py) that a new instance verifies before following it (serving/deploy/bootstrap.py)."""

    def __init__(self, config: Ec2TargetConfig, model_name: str) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.hook = S3Hook(aws_conn_id=config.aws_conn_id, region_name=config.region)
        self.bucket = config.s3_bucket
        self.prefix = f"{config.s3_prefix.strip('/')}/{model_name}"
        self.source = config.source(model_name)

    def publish(self, bundle: Path, version: str) -> None:
        """Every file, then the signature, the manifest last: a bundle with a manifest in S3 is complete."""
        last = {SIGNATURE: 1, MANIFEST: 2}
        files = sorted((p for p in bundle.rglob("*") if p.is_file()),
                       key=lambda p: last.get(p.relative_to(bundle).as_posix(), 0))
        for path in files:
            self.hook.load_file(path, f"{self.prefix}/{version}/{path.relative_to(bundle).as_posix()}",
                                bucket_name=self.bucket, replace=True)
        log.info("uploaded %d files to %s/%s/", len(files), self.source, version)

    def read_pointer(self) -> bytes | None:
        key = f"{self.prefix}/CURRENT"
        if not self.hook.check_for_key(key, self.bucket):
            return None
        return self.hook.get_key(key, self.bucket).get()["Body"].read() or None

    def write_pointer(self, envelope: bytes) -> None:
        self.hook.load_bytes(envelope, f"{self.prefix}/CURRENT", bucket_name=self.bucket, replace=True)


class Ec2Fleet:
    """Running instances carrying the configured tag, in a stable order (launch time, then id)."""

    def __init__(self, config: Ec2TargetConfig) -> None:
        from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

        self.hook = EC2Hook(aws_conn_id=config.aws_conn_id, region_name=config.region, api_type="client_type")
        self.config = config

    def instances(self) -> list[Instance]:
        found = self.hook.get_instances(filters=[
            {"Name": f"tag:{self.config.tag_key}", "Values": [self.config.tag_value]},
            {"Name": "instance-state-name", "Values": ["running"]}])
        found.sort(key=lambda i: (str(i.get("LaunchTime")), i["InstanceId"]))
        log.info("fleet %s=%s: %s", self.config.tag_key, self.config.tag_value,
                 [i["InstanceId"] for i in found] or "no running instances")
        return [Instance(i["InstanceId"], self._url(i)) for i in found]

    def _url(self, description: dict[str, Any]) -> str:
        tags = {t["Key"]: t["Value"] for t in description.get("Tags", [])}
        try:
            return self.config.instance_url.format(
                instance_id=description["InstanceId"], private_ip=description.get("PrivateIpAddress", ""),
                public_ip=description.get("PublicIpAddress", ""), private_dns=description.get("PrivateDnsName", ""),
                tags=tags).rstrip("/")
        except (KeyError, IndexError) as exc:
            raise DeploymentError(f"deployment.ec2.instance_url {self.config.instance_url!r} needs {exc} which "
                                  f"instance {description['InstanceId']} does not have") from exc


class SsmRunner:
    """Sends one serving command to one instance with the mlops-serving document and waits for its exit code and
    output. The parameters are checked against the document's patterns first: a value SSM would refuse is a
    DeploymentError here, and nothing is sent."""

    def __init__(self, config: Ec2TargetConfig, poll_seconds: float = 2.0) -> None:
        from airflow.providers.amazon.aws.hooks.ssm import SsmHook

        self.hook = SsmHook(aws_conn_id=config.aws_conn_id, region_name=config.region)
        self.timeout = config.command_timeout_seconds
        self.poll_seconds = poll_seconds
        self.document = CommandDocument.load()

    def send(self, instance: Instance, command: ServingCommand, comment: str) -> str:
        parameters = self.document.check(document_parameters(command, self.timeout))
        response = self.hook.conn.send_command(
            InstanceIds=[instance.instance_id], DocumentName=SSM_DOCUMENT,
            Comment=f"{comment} on {instance.instance_id}"[:100],
            TimeoutSeconds=self.timeout,
            Parameters={name: [value] for name, value in parameters.items()})
        command_id = response["Command"]["CommandId"]
        log.info("SSM command %s to %s: %s", command_id, instance.instance_id, comment)
        return command_id

    def wait(self, command_id: str, instance: Instance) -> CommandResult:
        deadline = time.monotonic() + self.timeout + 60
        while True:
            try:
                invocation = self.hook.get_command_invocation(command_id, instance.instance_id)
            except self.hook.conn.exceptions.InvocationDoesNotExist:
                invocation = {"Status": "Pending"}  # not registered yet, right after sending
            if invocation["Status"] in _TERMINAL:
                status = "" if invocation["Status"] == "Success" else f"\nSSM status: {invocation['Status']}"
                return CommandResult(int(invocation.get("ResponseCode", -1)),
                                     invocation.get("StandardOutputContent", ""),
                                     invocation.get("StandardErrorContent", "") + status)
            if time.monotonic() > deadline:
                raise DeploymentError(f"SSM command {command_id} on {instance.instance_id} still "
                                      f"{invocation['Status']} after {self.timeout}s")
            time.sleep(self.poll_seconds)

    def run(self, instance: Instance, command: ServingCommand, comment: str) -> CommandResult:
        return self.wait(self.send(instance, command, comment), instance)
