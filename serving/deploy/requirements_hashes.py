"""Writes the sha256 of every wheel serving/requirements.txt may install on an EC2 host, from PyPI.

    python -m serving.deploy.requirements_hashes            rewrite serving/requirements.txt with --hash lines,
                                                            and serving/deploy/requirements-wheels.json
    python -m serving.deploy.requirements_hashes --check    exit 1 if either file differs from what PyPI says
    python -m serving.deploy.requirements_hashes --download DIR
                                                            also run `pip download --require-hashes` for every
                                                            supported platform into DIR (proves pip finds a
                                                            hashed wheel everywhere; ~600 MB)

The hosts user-data.sh supports: CPython 3.11 (Amazon Linux 2023, Ubuntu 22.04) and 3.12 (Ubuntu 24.04), on
x86_64 and aarch64, glibc up to 2.39. For each pin, every wheel on PyPI that one of those hosts could pick (any
manylinux tag up to 2.39, abi3 and pure-Python wheels included; no sdists, no musl, macOS or Windows) is
listed, so `pip install --require-hashes --only-binary=:all:` succeeds on each host and installs nothing else.
A pin without a wheel for one of the targets is an error. Versions are never changed here: edit the pins
(the same as the root requirements.txt), then run this again. Needs only the standard library and packaging.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterable

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

INDEX = "https://pypi.org/simple"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
WHEELS = Path(__file__).resolve().parent / "requirements-wheels.json"
PYTHONS = ((3, 11), (3, 12))
ARCHES = ("x86_64", "aarch64")
MAX_GLIBC = 39  # Ubuntu 24.04; Amazon Linux 2023 has 2.34, Ubuntu 22.04 2.35
HEADER = """\
# The prediction server's own pinned set, for hosts that only serve (the EC2 user-data installs it):
# flask, gunicorn, numpy, pandas, scikit-learn, skops, msgspec, prometheus-client, boto3, pyyaml, cryptography
# (bundle signatures), onnxruntime (the serving engine, serving/engine.py: it runs the bundle's model.onnx, which
# export converted, so no skl2onnx or onnx), shap (POST /explain, serving/explain.py) and everything they pull in.
# Every version is exactly the root requirements.txt pin (a test checks this, and that the list is closed under
# dependencies), so a serving host runs what the tests ran.
# No mlflow, airflow or great-expectations: bundles are loaded with skops alone.
#
# Every pin carries the sha256 of each PyPI wheel a supported host may install (CPython 3.11 and 3.12,
# manylinux x86_64 and aarch64), so pip refuses any other file:
#   pip install --require-hashes --no-deps --only-binary=:all: -r serving/requirements.txt && pip check
# Generated: edit a version, then `python -m serving.deploy.requirements_hashes` (wheel names and hashes also go
# to serving/deploy/requirements-wheels.json; --check compares both with PyPI).
"""
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


class HashError(Exception):
    pass


def glibc_platforms(arch: str, max_minor: int = MAX_GLIBC) -> list[str]:
    """Every manylinux platform tag a host with glibc 2.<max_minor> on `arch` accepts, best first."""
    found = [f"manylinux_2_{minor}_{arch}" for minor in range(max_minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    for minor, name in legacy.items():
        if minor <= max_minor and (arch == "x86_64" or minor >= 17):  # manylinux1/2010 had no aarch64
            found.append(f"{name}_{arch}")
    return found


def target_tags(python: tuple[int, int], arch: str) -> set[Tag]:
    """The wheel tags CPython `python` on linux `arch` with glibc <= 2.MAX_GLIBC installs."""
    platforms = glibc_platforms(arch)
    return set(cpython_tags(python, platforms=platforms)) | set(compatible_tags(python, f"cp{python[0]}{python[1]}",
                                                                                    platforms=platforms))


def targets() -> dict[str, set[Tag]]:
    return {f"cp{major}{minor}-{arch}": target_tags((major, minor), arch)
            for major, minor in PYTHONS for arch in ARCHES}


def read_pins(path: Path) -> list[tuple[str, str]]:
    """(name, version) of each pin, in file order; --hash options and comments are ignored."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec = line.split()[0]
        match = _PIN.match(spec)
        if not match or any(not part.startswith("--hash=sha256:") for part in line.split()[1:]):
            raise HashError(f"{path.name}: {line!r} is not `name==version [--hash=sha256:...]`")
        found.append((match.group(1), match.group(2)))
    return found


def index_files(name: str, index: str = INDEX) -> list[dict]:
    """A project's files from the index's JSON simple API (PEP 691)."""
    request = urllib.request.Request(f"{index}/{canonicalize_name(name)}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["files"]


def select_wheels(name: str, version: str, files: Iterable[dict],
                  wanted: dict[str, set[Tag]]) -> dict[str, str]:
    """{wheel file name: sha256} of the pin's wheels some target can install; every target must have one."""
    chosen: dict[str, str] = {}
    covered: set[str] = set()
    for file in files:
        filename = file["filename"]
        if not filename.endswith(".whl") or file.get("yanked"):
            continue
        wheel_name, wheel_version, _, tags = parse_wheel_filename(filename)
        if wheel_name != canonicalize_name(name) or wheel_version != Version(version):
            continue
        hit = {target for target, tag_set in wanted.items() if tags & tag_set}
        if hit:
            digest = file.get("hashes", {}).get("sha256")
            if not digest or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise HashError(f"{filename}: the index gives no sha256")
            chosen[filename] = digest
            covered |= hit
    missing = sorted(set(wanted) - covered)
    if missing:
        raise HashError(f"{name}=={version} has no wheel for {', '.join(missing)} on the index")
    return dict(sorted(chosen.items()))


def render(pins: dict[str, dict[str, str]]) -> str:
    lines = [HEADER.rstrip("\n")]
    for spec, wheels in pins.items():
        hashes = sorted(set(wheels.values()))
        lines.append(f"{spec} \\")
        lines.extend(f"    --hash=sha256:{digest}" + (" \\" if i < len(hashes) - 1 else "")
                     for i, digest in enumerate(hashes))
    return "\n".join(lines) + "\n"


def wheels_document(pins: dict[str, dict[str, str]]) -> str:
    return json.dumps({"index": INDEX, "targets": sorted(targets()), "max_glibc": f"2.{MAX_GLIBC}",
                       "wheels": pins}, indent=1) + "\n"


def generate(requirements: Path = REQUIREMENTS, index: str = INDEX) -> dict[str, dict[str, str]]:
    wanted = targets()
    return {f"{name}=={version}": select_wheels(name, version, index_files(name, index), wanted)
            for name, version in read_pins(requirements)}


def pip_download(requirements: Path, directory: Path) -> None:
    """pip itself, per target: picks its best wheel and checks it against the hashes."""
    for major, minor in PYTHONS:
        for arch in ARCHES:
            platforms = [arg for platform in glibc_platforms(arch) for arg in ("--platform", platform)]
            command = [sys.executable, "-m", "pip", "--isolated", "download", "--quiet", "--require-hashes",
                       "--no-deps", "--only-binary=:all:", "--index-url", INDEX, "--cert",
                       "/etc/ssl/certs/ca-certificates.crt", *platforms, "--python-version", f"{major}.{minor}",
                       "--implementation", "cp", "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none",
                       "-r", str(requirements), "-d", str(directory / f"cp{major}{minor}-{arch}")]
            print(f"pip download for cp{major}{minor} {arch}", file=sys.stderr)
            subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.deploy.requirements_hashes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the index; change nothing")
    parser.add_argument("--download", type=Path, metavar="DIR", help="then pip download every target into DIR")
    parser.add_argument("--index", default=INDEX)
    args = parser.parse_args(argv)
    try:
        pins = generate(REQUIREMENTS, args.index)
    except (HashError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text, document = render(pins), wheels_document(pins)
    if args.check:
        stale = [p.name for p, want in ((REQUIREMENTS, text), (WHEELS, document)) if p.read_text() != want]
        if stale:
            print(f"out of date with {args.index}: {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{REQUIREMENTS.name}: {len(pins)} pins, hashes match {args.index}", file=sys.stderr)
    else:
        REQUIREMENTS.write_text(text)
        WHEELS.write_text(document)
        count = sum(len(w) for w in pins.values())
        print(f"wrote {len(pins)} pins with {count} wheel hashes to {REQUIREMENTS} and {WHEELS}", file=sys.stderr)
    if args.download:
        pip_download(REQUIREMENTS, args.download)
    return 0


if __name__ == "__main__":
    sys.exit(main())
