"""What a rollout needs from a deployment target, as Protocols, and the records passed across them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Instance:
    instance_id: str
    url: str  # where the deploy step reaches its prediction server; "" when none is running


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str = ""

    def last_json(self) -> dict[str, Any]:
        """`python -m serving` ends its output with one JSON line saying what it did."""
        for line in reversed(self.stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        return {}

    def tail(self, chars: int = 600) -> str:
        text = (self.stdout + "\n" + self.stderr).strip()
        return text[-chars:]


@dataclass(frozen=True)
class ServingCommand:
    """A model store command for one server, as data: `action` is "refresh" or "activate", `parameters` the
    values of the mlops-serving SSM document's parameters of the same names (refresh: source, version,
    manifestSha256, pointer; activate: version, pointer). Runners never build shell lines from it: the
    document's script is what runs."""

    action: str
    parameters: dict[str, str]


class BundleStore(Protocol):
    """Where servers fetch bundles from: `source` is what `python -m serving refresh --source` takes."""

    @property
    def source(self) -> str: ...
    def publish(self, bundle: Path, version: str) -> None: ...
    def read_pointer(self) -> bytes | None: ...  # the signed pointer envelope (serving/pointer.py) new servers follow
    def write_pointer(self, envelope: bytes) -> None: ...


class Fleet(Protocol):
    def instances(self) -> list[Instance]: ...


class CommandRunner(Protocol):
    def run(self, instance: Instance, command: ServingCommand, comment: str) -> CommandResult: ...


@dataclass
class DeploymentResult:
    target: str
    model_name: str
    version: str
    source: str
    previous_pointer: str | None  # the version the store's verified pointer named before
    manifest_sha256: str  # of the published bundle's manifest: every server refuses any other
    instances: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        changed = sum(1 for i in self.instances if i.get("changed"))
        answering = [i for i in self.instances if i.get("url")]
        if not answering:
            return (f"{self.model_name} version {self.version} is in the store via {self.target}, but no server "
                    f"answered; the next server started on the store serves it ({self.seconds:.1f}s)")
        return (f"{self.model_name} version {self.version} live on {len(answering)} server(s) via {self.target} "
                f"({changed} switched, {len(self.instances) - changed} already on it) in {self.seconds:.1f}s")

    def xcom(self) -> dict[str, Any]:
        return {"target": self.target, "model_name": self.model_name, "version": self.version,
                "servers": len(self.instances), "seconds": self.seconds}
