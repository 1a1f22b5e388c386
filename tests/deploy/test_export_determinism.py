"""Export in a new process (a rollback, a redeploy) gives the bytes an earlier export gave: servers holding the
version take it as the same bundle."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import store
from tests.support.bundles import make_bundle

pytestmark = pytest.mark.integration  # conversions in child processes


def test_the_same_model_converts_to_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """A rollback exports its version again in a new process: model.onnx must come out byte for byte as before, or
    the manifest differs and the servers holding the version refuse it. skl2onnx lists the graph's opsets from a
    set, whose order follows PYTHONHASHSEED (seeds 3 and 4 gave two orders before export sorted them)."""
    bundle = make_bundle(tmp_path / "store", "1")
    script = ("import hashlib, sys; from pathlib import Path; from include.release.onnx.bundle import write_model_onnx;"
              "b = Path(sys.argv[1]); write_model_onnx(b); print(hashlib.sha256((b / 'model.onnx').read_bytes())"
              ".hexdigest())")
    digests = set()
    for seed in ("3", "4"):
        copy = tmp_path / f"seed-{seed}"
        shutil.copytree(bundle, copy)
        (copy / store.ONNX_MODEL).unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-c", script, str(copy)], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).parents[2])
        digests.add(done.stdout.split()[-1])
    assert digests == {hashlib.sha256((bundle / store.ONNX_MODEL).read_bytes()).hexdigest()}
