"""The server never converts: a process that serves a bundle runs the model.onnx export wrote, and has imported
neither skl2onnx nor onnx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bundles import GOOD_ROW
from tests.support.signing import public_key_file

pytestmark = pytest.mark.integration  # a fresh Python process


def test_a_server_process_serves_the_exported_model_onnx_without_any_converter(store: Path) -> None:
    """A fresh process builds the app as a gunicorn worker does (create_app loads CURRENT) and answers: ONNX Runtime
    serves the graph skl2onnx wrote at export, and neither skl2onnx nor onnx was ever imported in that process."""
    script = f"""
import json, sys
from pathlib import Path
from serving.app import create_app
app = create_app({{"model_store": Path({str(store)!r}), "poll_seconds": 0,
                  "public_key": Path({str(public_key_file())!r})}})
model = app.extensions["serving"].holder.current
answer = app.test_client().post("/predict", json={GOOD_ROW!r})
print(json.dumps({{"engine": model.engine.name, "producer": model.compiled.session.get_modelmeta().producer_name,
                  "status": answer.status_code,
                  "converters": sorted(m for m in sys.modules if m.split(".")[0] in ("skl2onnx", "onnx"))}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVING_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"engine": "onnxruntime", "producer": "skl2onnx", "status": 200, "converters": []}, seen
