"""The `mlops-serving` SSM Command document: the only command the deploy role may send to the fleet.

serving/deploy/ssm-document-mlops-serving.json is what the operator registers in SSM (docs/ec2.md). This module
reads it and does what SSM does with it: check each parameter against the document's allowedValues and
allowedPattern, then substitute the values into its script and hand them over as SSM_<name> environment
variables. The ec2 target checks before it sends (SSM checks again); the local target renders and runs the same
script on this machine, so both targets run one script.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from include.ml.exceptions import DeploymentError
from include.release.ports import ServingCommand
from serving import deploy as serving_deploy

DOCUMENT_NAME = "mlops-serving"
DOCUMENT_PATH = Path(serving_deploy.__file__).parent / "ssm-document-mlops-serving.json"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


@dataclass(frozen=True)
class Rendered:
    """The script as an instance runs it, the environment SSM adds, and the timeout it runs under."""

    script: str
    env: dict[str, str]
    timeout_seconds: int


@dataclass(frozen=True)
class CommandDocument:
    content: dict[str, Any]

    @classmethod
    def load(cls, path: Path = DOCUMENT_PATH) -> CommandDocument:
        return cls.parse(path.read_text())

    @classmethod
    def parse(cls, text: str) -> CommandDocument:
        content = json.loads(text)
        if content.get("schemaVersion") != "2.2" or len(content.get("mainSteps", [])) != 1 or \
                content["mainSteps"][0].get("action") != "aws:runShellScript":
            raise DeploymentError("the mlops-serving document must be schemaVersion 2.2 with one aws:runShellScript "
                                  "step")
        return cls(content)

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.content["parameters"]

    def check(self, values: Mapping[str, str]) -> dict[str, str]:
        """Every parameter's value, defaults filled in, as SSM accepts them; DeploymentError naming the first
        refused one otherwise. Patterns must match the whole value (a trailing newline does not pass)."""
        unknown = sorted(set(values) - set(self.parameters))
        if unknown:
            raise DeploymentError(f"{DOCUMENT_NAME} has no parameter {', '.join(unknown)}")
        checked = {}
        for name, spec in self.parameters.items():
            if name not in values and "default" not in spec:
                raise DeploymentError(f"{DOCUMENT_NAME} needs the parameter {name}")
            value = values.get(name, spec.get("default"))
            if not isinstance(value, str):
                raise DeploymentError(f"{DOCUMENT_NAME} parameter {name} must be a string, not {type(value).__name__}")
            if "allowedValues" in spec and value not in spec["allowedValues"]:
                raise DeploymentError(f"{DOCUMENT_NAME} parameter {name}={value[:80]!r} is not one of "
                                      f"{spec['allowedValues']}: nothing was sent")
            if "allowedPattern" in spec and not re.fullmatch(spec["allowedPattern"], value):
                raise DeploymentError(f"{DOCUMENT_NAME} parameter {name}={value[:80]!r} does not match "
                                      f"{spec['allowedPattern']}: nothing was sent")
            checked[name] = value
        return checked

    def render(self, values: Mapping[str, str], env_interpolation: bool = True) -> Rendered:
        """The step's script with the checked values in place of {{ name }}, as the SSM Agent writes it out.
        `env_interpolation`: also set SSM_<name> for parameters with interpolationType ENV_VAR, as agents from
        3.3.2746.0 on do (older agents substitute only)."""
        checked = self.check(values)
        inputs = self.content["mainSteps"][0]["inputs"]
        script = "\n".join(_PLACEHOLDER.sub(lambda m: checked[m.group(1)], line) for line in inputs["runCommand"])
        env = {f"SSM_{name}": checked[name] for name, spec in self.parameters.items()
               if env_interpolation and spec.get("interpolationType") == "ENV_VAR"}
        timeout = int(_PLACEHOLDER.sub(lambda m: checked[m.group(1)], str(inputs.get("timeoutSeconds", "3600"))))
        return Rendered(script, env, timeout)


def document_parameters(command: ServingCommand, timeout_seconds: int | None = None) -> dict[str, str]:
    """A serving command as the document's parameters: the action and its values (and the execution timeout)."""
    values = {"action": command.action, **command.parameters}
    if timeout_seconds is not None:
        values["executionTimeout"] = str(int(timeout_seconds))
    return values


def check_command(command: ServingCommand, document: CommandDocument | None = None) -> dict[str, str]:
    """What the sending side checks before anything is sent: the values the document (and SSM) would accept."""
    return (document or CommandDocument.load()).check(document_parameters(command))
