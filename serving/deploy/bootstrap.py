"""The two AWS look-ups of the EC2 setup script (serving/deploy/user-data.sh), with the pinned boto3 of the server.

    python -m serving.deploy.bootstrap current-version s3://<bucket>/<prefix>/<model>
        prints the version the fleet should serve (the CURRENT object the deploy task writes);
        exit 3 when there is no CURRENT object yet (no deploy has run), 1 on any other failure.
    python -m serving.deploy.bootstrap api-key-env --parameter /mlops/prediction-server/api-key \\
            --output /etc/mlops/serving-secrets.env
        reads the API key from an SSM Parameter Store SecureString and writes `SERVING_API_KEY=<key>`
        to a root-only (0600) file for systemd's EnvironmentFile=; the key is never printed.

Credentials and region come from boto3's usual chain (on EC2: the instance role; AWS_DEFAULT_REGION is set by
the setup script).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from serving.store import BundleError, check_version_name

NO_POINTER = 3
POINTER = "CURRENT"
# Safe unquoted in a systemd EnvironmentFile and in a shell `.`: base64, base64url and hex keys all fit.
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{16,4096}$")


class BootstrapError(Exception):
    pass


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise BootstrapError(f"expected s3://bucket/prefix, got {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket or not prefix.strip("/"):
        raise BootstrapError(f"expected s3://bucket/prefix, got {uri!r}")
    return bucket, prefix.strip("/")


def current_version(source: str, s3: Any = None) -> str | None:
    """The version named by <source>/CURRENT, or None when that object does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(source)
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    key = f"{prefix}/{POINTER}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise BootstrapError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    except BotoCoreError as exc:
        raise BootstrapError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    version = body.decode("utf-8", errors="replace").strip()
    try:
        return check_version_name(version)  # it becomes a path and a command argument: no surprises
    except BundleError as exc:
        raise BootstrapError(f"s3://{bucket}/{key}: {exc}") from exc


def api_key(parameter: str, ssm: Any = None) -> str:
    """The decrypted value of a SecureString parameter; a plain String is refused (the key would sit unencrypted)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if ssm is None:
        import boto3

        ssm = boto3.client("ssm")
    try:
        found = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]
    except (BotoCoreError, ClientError) as exc:
        raise BootstrapError(f"cannot read SSM parameter {parameter}: {exc}") from exc
    if found.get("Type") != "SecureString":
        raise BootstrapError(f"SSM parameter {parameter} is a {found.get('Type')}, not a SecureString: store the "
                             f"API key encrypted (aws ssm put-parameter --type SecureString ...)")
    value = found["Value"]
    if not _KEY.match(value):
        raise BootstrapError(f"SSM parameter {parameter}: the API key must be 16-4096 characters from "
                             f"A-Z a-z 0-9 . _ ~ + / = - (e.g. `openssl rand -base64 32`)")
    return value


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Atomically, mode 0600 from the first byte (mkstemp), so the secret is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("# Written by the mlops setup script from SSM Parameter Store; "
                     "re-running it rewrites this file.\n")
            fh.writelines(f"{name}={value}\n" for name, value in values.items())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.deploy.bootstrap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cur = sub.add_parser("current-version", help="print the version <source>/CURRENT names (exit 3: none yet)")
    cur.add_argument("source", help="s3://bucket/prefix/model, as given to `python -m serving refresh --source`")
    key = sub.add_parser("api-key-env", help="write SERVING_API_KEY from an SSM SecureString to a 0600 file")
    key.add_argument("--parameter", required=True)
    key.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "current-version":
            version = current_version(args.source)
            if version is None:
                print(f"no {args.source}/{POINTER} object yet", file=sys.stderr)
                return NO_POINTER
            print(version)
        else:
            write_env_file(args.output, {"SERVING_API_KEY": api_key(args.parameter)})
            print(f"wrote SERVING_API_KEY from {args.parameter} to {args.output}", file=sys.stderr)
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
