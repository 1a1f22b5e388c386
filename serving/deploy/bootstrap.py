"""The two AWS look-ups of the EC2 setup script (serving/deploy/user-data.sh), with the pinned boto3 of the server.

    python -m serving.deploy.bootstrap current-pointer s3://<bucket>/<prefix>/<model> --public-key PEM --model NAME
        prints `<version> <pointer token>`: the version the fleet should serve and the signed pointer naming it
        (the CURRENT object the deploy task writes), once the pointer is verified exactly as a server verifies
        one (a trusted key's signature, the model NAME, a plain version name; serving/pointer.py). The setup
        script passes both to `python -m serving refresh`. Exit 3 when there is no CURRENT object yet (no deploy
        has run), 1 on any other failure (an unsigned or wrongly signed pointer included).
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

from serving import pointer as pointers
from serving.s3_uri import parse_s3_uri
from serving.signing import PublicKeys, load_public_keys
from serving.store import BundleError

NO_POINTER = 3
POINTER = "CURRENT"
# Safe unquoted in a systemd EnvironmentFile and in a shell `.`: base64, base64url and hex keys all fit.
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{16,4096}$")


class BootstrapError(Exception):
    pass


def split_s3(uri: str) -> tuple[str, str]:
    """The bucket and the (non-empty) prefix of s3://bucket/prefix[/], the prefix without a trailing "/"."""
    try:
        folder = parse_s3_uri(uri, prefix=True)
    except ValueError as exc:
        raise BootstrapError(f"expected s3://bucket/prefix, got {uri!r}: {exc}") from None
    if not folder.key_below():
        raise BootstrapError(f"expected s3://bucket/prefix, got {uri!r}")
    return folder.bucket, folder.key_below()


def current_pointer(source: str, trusted: PublicKeys, model: str, s3: Any = None) -> pointers.Pointer | None:
    """The verified pointer of <source>/CURRENT, or None when that object does not exist."""
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
    try:
        # It becomes a path and a command argument: verified as a server verifies it, or nothing is used.
        pointer = pointers.verify(body, trusted, f"s3://{bucket}/{key}")
        pointers.check_model(pointer, model)
    except BundleError as exc:
        raise BootstrapError(str(exc)) from exc
    return pointer


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
    cur = sub.add_parser("current-pointer", help="print the version and the verified pointer token <source>/CURRENT "
                                                 "holds (exit 3: none yet)")
    cur.add_argument("source", help="s3://bucket/prefix/model, as given to `python -m serving refresh --source`")
    cur.add_argument("--public-key", type=Path, required=True, help="the PEM public key(s) pointers must verify with")
    cur.add_argument("--model", required=True, help="the model the pointer must name (SERVING_MODEL_NAME)")
    key = sub.add_parser("api-key-env", help="write SERVING_API_KEY from an SSM SecureString to a 0600 file")
    key.add_argument("--parameter", required=True)
    key.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "current-pointer":
            try:
                trusted = load_public_keys(args.public_key)
            except (OSError, ValueError) as exc:
                raise BootstrapError(f"--public-key {args.public_key}: {exc}") from exc
            pointer = current_pointer(args.source, trusted, args.model)
            if pointer is None:
                print(f"no {args.source}/{POINTER} object yet", file=sys.stderr)
                return NO_POINTER
            print(pointer.version, pointer.token)
        else:
            write_env_file(args.output, {"SERVING_API_KEY": api_key(args.parameter)})
            print(f"wrote SERVING_API_KEY from {args.parameter} to {args.output}", file=sys.stderr)
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
