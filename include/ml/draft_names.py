"""What a drafted config.yaml names: the dataset (MLflow experiment and registered model, model store), the data
source's URI, and a free port for the local prediction server.
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from pathlib import Path, PurePosixPath

import yaml

from include.ml.configuration import DEFAULT_CONFIG_DIR, PROJECT_ROOT
from include.ml.exceptions import DraftError

FIRST_PORT, SKIPPED_PORTS = 8000, (8080,)  # Airflow's API server listens on 8080


def dataset_name(data: str) -> str:
    path = urllib.parse.unquote(urllib.parse.urlparse(data).path) if "://" in data else data.replace("\\", "/")
    stem = PurePosixPath(path).name
    while (suffix := PurePosixPath(stem).suffix.lower()) in (".zip", ".csv", ".tsv", ".txt"):
        stem = stem[:-len(suffix)]
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "dataset"


def source_uri(data: str) -> str:
    if "://" in data:
        return data
    path = Path(data).expanduser().resolve()
    return path.relative_to(PROJECT_ROOT).as_posix() if path.is_relative_to(PROJECT_ROOT) else str(path)


def _ports_in_use(out_dir: Path) -> set[int]:
    """The server ports named by the config.yaml of out_dir's siblings and of the shipped config dir."""
    ports = set()
    parent = out_dir.resolve().parent
    files = [*parent.glob("*/config.yaml"), DEFAULT_CONFIG_DIR / "config.yaml"] if parent.is_dir() else \
        [DEFAULT_CONFIG_DIR / "config.yaml"]
    for path in files:
        try:
            url = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("deployment") or {}) \
                .get("local", {}).get("server_url") or "http://127.0.0.1:8000"
            ports.add(urllib.parse.urlparse(str(url)).port or 80)
        except (OSError, yaml.YAMLError, AttributeError, ValueError):
            continue  # not a config we can read: it claims no port
    return ports


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port(out_dir: Path) -> int:
    used = _ports_in_use(out_dir)
    for port in range(FIRST_PORT, 65536):
        if port not in used and port not in SKIPPED_PORTS and not _listening(port):
            return port
    raise DraftError("no free port from 8000 on for deployment.local.server_url")
