"""The local target: a release directory standing in for S3, the configured server, and a shell on this machine."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from include.release.command_document import CommandDocument, document_parameters
from include.release.ports import CommandResult, Instance, ServingCommand
from serving import store

log = logging.getLogger(__name__)


@dataclass
class DirectoryStore:
    """<root>/<version>/ bundles and <root>/CURRENT (a signed pointer), like s3://bucket/prefix/model."""

    root: Path

    @property
    def source(self) -> str:
        return str(self.root)

    def publish(self, bundle: Path, version: str) -> None:
        """Like an S3 upload, a new bundle replaces one published earlier under the same version name."""
        target = self.root / version
        if target.exists() and (target / store.MANIFEST).read_bytes() == (bundle / store.MANIFEST).read_bytes():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        staged, old = self.root / f".{version}.partial", self.root / f".{version}.old"
        for leftover in (staged, old):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.copytree(bundle, staged)
        if target.exists():
            os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)

    def read_pointer(self) -> bytes | None:
        return store.read_pointer(self.root)

    def write_pointer(self, envelope: bytes) -> None:
        store.write_pointer(self.root, envelope)


@dataclass
class StaticFleet:
    servers: list[Instance]

    def instances(self) -> list[Instance]:
        return list(self.servers)


@dataclass
class ShellRunner:
    """Runs a serving command on this machine as SSM runs it on an instance: the mlops-serving document's script,
    its parameters checked against the document's own patterns and substituted as the SSM Agent does. `env`
    stands in for /etc/mlops/serving.env."""

    env: dict[str, str]
    timeout: float = 600.0
    document: CommandDocument = field(default_factory=CommandDocument.load)

    def run(self, instance: Instance, command: ServingCommand, comment: str) -> CommandResult:
        log.info("%s on %s", comment, instance.instance_id)
        rendered = self.document.render(document_parameters(command, int(self.timeout)))
        done = subprocess.run(["bash", "-c", rendered.script], env={**os.environ, **self.env, **rendered.env},
                              capture_output=True, text=True, timeout=rendered.timeout_seconds)
        return CommandResult(done.returncode, done.stdout, done.stderr)


def server_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3):
            return True
    except (OSError, ValueError):
        return False
