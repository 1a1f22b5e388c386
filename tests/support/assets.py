"""The EC2 host assets in serving/deploy/ and the serving-only requirements, read back for the tests of tests/deploy:
requirement pins and their hashes, systemd units, and IAM policies with a small evaluator of what they allow."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable, Mapping

from packaging.utils import canonicalize_name

from tests.support.project import REPO

DEPLOY = REPO / "serving" / "deploy"
USER_DATA = DEPLOY / "user-data.sh"
UNIT = DEPLOY / "prediction-server.service"
SHIP_UNIT = DEPLOY / "capture-ship.service"  # and its .timer: prediction capture files to S3
SHIP_TIMER = DEPLOY / "capture-ship.timer"
NGINX_TEMPLATE = DEPLOY / "nginx-prediction-server.conf"
INSTANCE_POLICY = DEPLOY / "iam-policy.json"
DEPLOYER_POLICY = DEPLOY / "airflow-deployer-policy.json"
PUBLISHER_POLICY = DEPLOY / "release-publisher-policy.json"
BUCKET_POLICY = DEPLOY / "bucket-policy.json"
SERVING_REQUIREMENTS = REPO / "serving" / "requirements.txt"
REQUIREMENTS_WHEELS = DEPLOY / "requirements-wheels.json"
RELEASE_PREFIX = "releases/app"  # s3://<bucket>/releases/app/: the release publisher's, read-only to instances
# The placeholders docs/ec2.md tells to replace in the policy files.
PLACEHOLDERS = ("BUCKET", "PREFIX", "MODEL_NAME", "REGION", "ACCOUNT_ID", "RELEASE_PUBLISHER_ROLE", "KMS_KEY_ID")


def requirements(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a pip requirements file of exact pins (continuation lines joined)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        name, sep, version = spec.partition("==")
        assert sep and version, f"{path.name}: {line!r} is not an exact pin"
        assert all(o.startswith("--hash=sha256:") for o in options), f"{path.name}: {line!r} has other options"
        key = canonicalize_name(name)
        assert key not in found, f"{path.name}: {name} pinned twice"
        found[key] = (version.strip(), [o.removeprefix("--hash=sha256:") for o in options])
    return found


def pins(path: Path) -> dict[str, str]:
    return {name: version for name, (version, _) in requirements(path).items()}


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
    """An IAM policy's statements, checked to be well-formed: no wildcard action in an Allow, a Principal only
    in a bucket policy; Action and Resource always lists."""
    policy = json.loads(path.read_text())
    assert policy["Version"] == "2012-10-17"
    found = policy["Statement"]
    for statement in found:
        assert statement["Effect"] in ("Allow", "Deny"), statement
        assert len({"Action", "NotAction"} & set(statement)) == 1, statement
        assert len({"Resource", "NotResource"} & set(statement)) == 1, statement
        _as_lists(statement)
        if statement["Effect"] == "Allow":
            assert "Action" in statement and "Resource" in statement, f"no Not* in an Allow: {statement}"
            assert not any(a == "*" or a.endswith(":*") for a in statement["Action"]), statement
    return found


def _as_lists(statement: dict[str, Any]) -> None:
    for field in ("Action", "NotAction", "Resource", "NotResource"):
        if isinstance(statement.get(field), str):
            statement[field] = [statement[field]]


def actions(found: list[dict[str, Any]], service: str, effect: str = "Allow") -> set[str]:
    return {a for s in found if s["Effect"] == effect for a in s.get("Action", []) if a.startswith(f"{service}:")}


def check_s3_scope(found: list[dict[str, Any]], objects: Iterable[str], listed: Iterable[str]) -> None:
    """Every allowed S3 action is on one of `objects` (object ARNs), or is ListBucket on the bucket limited to
    the `listed` key prefixes."""
    for statement in found:
        if statement["Effect"] != "Allow":
            continue
        for action in statement["Action"]:
            if not action.startswith("s3:"):
                continue
            if action == "s3:ListBucket":
                assert statement["Resource"] == ["arn:aws:s3:::BUCKET"]
                assert statement["Condition"] == {"StringLike": {"s3:prefix": list(listed)}}
            else:
                assert set(statement["Resource"]) <= set(objects), statement


# --- what a policy allows ---------------------------------------------------------------------------------------
# IAM's evaluation, for the features the policies here use: an explicit Deny wins, then any Allow, else denied.
# Action/NotAction and Resource/NotResource match with * and ? (* crosses "/"; actions are case-insensitive); an
# action on several resources is allowed only if it is on each (allowed_on_all); conditions StringEquals,
# StringLike, ArnNotEquals and Bool; a key missing from the request context fails a condition, except
# ArnNotEquals, which it passes (IAM's rule for negated operators).


def render_policy(path: Path, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """The policy's statements with its placeholders replaced, as docs/ec2.md's sed does."""
    text = path.read_text()
    leftover = set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", text)) - set(PLACEHOLDERS)
    assert not leftover, f"{path.name}: unknown placeholders {sorted(leftover)}"
    text = re.sub(r"\b(" + "|".join(PLACEHOLDERS) + r")\b", lambda m: values[m.group(1)], text)
    policy = json.loads(text)
    for statement in policy["Statement"]:
        _as_lists(statement)
    return policy["Statement"]


def _condition_holds(condition: Mapping[str, Mapping[str, Any]], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            have = context.get(key)
            if operator == "StringEquals":
                ok = have is not None and have in values
            elif operator == "StringLike":
                ok = have is not None and any(fnmatchcase(have, v) for v in values)
            elif operator == "ArnNotEquals":
                ok = have is None or have not in values
            elif operator == "Bool":
                ok = have is not None and have.lower() in [str(v).lower() for v in values]
            else:
                raise AssertionError(f"condition operator {operator} is not modelled by this evaluator")
            if not ok:
                return False
    return True


def _listed(statement: Mapping[str, Any], field: str, value: str) -> bool:
    """Whether `value` is what the statement's Action/Resource names, or what its NotAction/NotResource leaves."""
    fold = str.lower if field == "Action" else str  # actions are case-insensitive, ARNs are not
    if field in statement:
        return any(fnmatchcase(fold(value), fold(p)) for p in statement[field])
    return not any(fnmatchcase(fold(value), fold(p)) for p in statement[f"Not{field}"])


def _matches(statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, str]) -> bool:
    return (_listed(statement, "Action", action) and _listed(statement, "Resource", resource)
            and _condition_holds(statement.get("Condition", {}), context))


def allowed(policies: Iterable[list[dict[str, Any]]], action: str, resource: str,
            context: Mapping[str, str] | None = None) -> bool:
    """Whether a principal holding all of `policies` (identity and bucket policies alike) may do `action`."""
    context = {"aws:SecureTransport": "true", **(context or {})}
    everything = [s for policy in policies for s in policy]
    if any(s["Effect"] == "Deny" and _matches(s, action, resource, context) for s in everything):
        return False
    return any(s["Effect"] == "Allow" and _matches(s, action, resource, context) for s in everything)


def allowed_on_all(policies: Iterable[list[dict[str, Any]]], action: str,
                   resources: Mapping[str, Mapping[str, str]]) -> bool:
    """An action on several resources at once (ssm:SendCommand: the document and each instance) is authorised
    per resource, each with its own context (an instance's tags): it is allowed only if every one is."""
    policies = list(policies)
    return all(allowed(policies, action, resource, context) for resource, context in resources.items())
