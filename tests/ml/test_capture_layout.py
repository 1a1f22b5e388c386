"""The capture files' layout has one definition, on the serving side (serving.capture.model_folder): the monitor
reads a model's rows where the prediction server wrote them, whatever characters its registered name holds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from include.ml.config_file import MonitoringSources
from include.monitoring import capture
from serving.capture import CaptureWriter, model_folder
from tests.support.frames import schema


@pytest.mark.parametrize("name", ["wine quality", "fraud/v2 (EU)", ".hidden", "plain-name_1.0"])
def test_the_monitor_reads_the_rows_the_server_wrote_under_any_model_name(tmp_path: Path, name: str) -> None:
    writer = CaptureWriter(tmp_path)
    columns = {"x1": np.array([0.5, 1.5, 2.5]), "x2": np.array([1.0, 2.0, 3.0])}
    assert writer.submit("req-1", name, "1", columns, 3, [1.0, 2.0, 3.0], None)
    writer.close()
    folders = [p.name for p in tmp_path.iterdir()]
    assert folders == [model_folder(name)] and "/" not in folders[0] and not folders[0].startswith(".")
    now = datetime.now(timezone.utc)
    captured = capture.collect(MonitoringSources(capture_dir=str(tmp_path)), schema("regression"), name, "1",
                               now - timedelta(hours=1), now + timedelta(minutes=1))
    assert len(captured.frame) == 3
    assert captured.frame["x1"].tolist() == [0.5, 1.5, 2.5]
