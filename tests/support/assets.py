"""The EC2 host assets in serving/deploy/ and the serving-only requirements, read back for the tests of tests/deploy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from tests.support.project import REPO

DEPLOY = REPO / "serving" / "deploy"
USER_DATA = DEPLOY / "user-data.sh"
UNIT = DEPLOY / "prediction-server.service"
INSTANCE_POLICY = DEPLOY / "iam-policy.json"
DEPLOYER_POLICY = DEPLOY / "airflow-deployer-policy.json"
SERVING_REQUIREMENTS = REPO / "serving" / "requirements.txt"


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{path.name}: {line!r} is not an exact pin"
        key = canonicalize_name(name)
        assert key not in found, f"{path.name}: {name} pinned twice"
        found[key] = version.strip()
    return found


def ec2_config() -> Any:
    from include.ml.configuration import ConfigurationManager

    return ConfigurationManager().config


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's format: [Section] and Key=value, keys may repeat (configparser cannot keep repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"not a unit line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def statements(path: Path) -> list[dict[str, Any]]:
    """An IAM policy's statements, checked to be valid Allow statements with no wildcard action."""
    policy = json.loads(path.read_text())
    assert policy["Version"] == "2012-10-17"
    found = policy["Statement"]
    for statement in found:
        assert statement["Effect"] == "Allow" and {"Action", "Resource"} <= set(statement), statement
        for field in ("Action", "Resource"):
            if isinstance(statement[field], str):
                statement[field] = [statement[field]]
        assert not any(a == "*" or a.endswith(":*") for a in statement["Action"]), statement
    return found


def actions(found: list[dict[str, Any]], service: str) -> set[str]:
    return {a for s in found for a in s["Action"] if a.startswith(f"{service}:")}


def check_s3_scope(found: list[dict[str, Any]]) -> None:
    for statement in found:
        for action in statement["Action"]:
            if not action.startswith("s3:"):
                continue
            if action == "s3:ListBucket":
                assert statement["Resource"] == ["arn:aws:s3:::BUCKET"]
                assert statement["Condition"] == {"StringLike": {"s3:prefix": ["PREFIX/*"]}}
            else:
                assert statement["Resource"] == ["arn:aws:s3:::BUCKET/PREFIX/*"], statement
