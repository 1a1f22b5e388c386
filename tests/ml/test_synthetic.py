"""bench/synthetic.py: seeded rows shaped by a schema.yaml, which the benchmarks and tests draw their inputs from,
written chunk by chunk (bounded memory) as CSV or Parquet."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from bench import synthetic
from tests.support.project import CONFIG_DIR


def test_from_schema_follows_the_schema() -> None:
    schema = synthetic.load_schema(CONFIG_DIR)
    frame = synthetic.from_schema(schema, 500, seed=1)
    pd.testing.assert_frame_equal(frame, synthetic.from_schema(schema, 500, seed=1))
    assert list(frame.columns) == [c.name for c in schema.columns]
    for column in schema.columns:
        if column.min is not None:
            assert frame[column.name].min() >= column.min, column.name
        if column.max is not None:
            assert frame[column.name].max() <= column.max, column.name


def test_one_chunk_is_the_seeded_frame_and_more_chunks_follow_it(tmp_path: Path) -> None:
    schema = synthetic.load_schema(CONFIG_DIR)
    separator = synthetic.read_separator(CONFIG_DIR)
    one, three = tmp_path / "one.csv", tmp_path / "three.csv"
    synthetic.write_rows(CONFIG_DIR, 120, 7, one, chunk_rows=500)
    synthetic.write_rows(CONFIG_DIR, 250, 7, three, chunk_rows=120)
    expected = synthetic.from_schema(schema, 120, 7)
    read_one, read_three = (pd.read_csv(path, sep=separator) for path in (one, three))
    as_csv = pd.read_csv(io.StringIO(expected.to_csv(sep=separator, index=False)), sep=separator)
    pd.testing.assert_frame_equal(read_one, as_csv)  # exactly from_schema's frame
    assert len(read_three) == 250 and list(read_three.columns) == list(expected.columns)  # one header
    pd.testing.assert_frame_equal(read_three.head(120), read_one)  # the first chunk is the one-chunk file
    assert not read_three.iloc[120:].reset_index(drop=True).equals(read_one.iloc[:130])  # later chunks: new draws
    again = tmp_path / "again.csv"
    synthetic.write_rows(CONFIG_DIR, 250, 7, again, chunk_rows=120)
    assert again.read_bytes() == three.read_bytes()


def test_parquet_has_a_row_group_per_chunk_and_no_target_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "score.parquet"
    synthetic.write_rows(CONFIG_DIR, 250, 3, path, target=False, chunk_rows=100)
    schema = synthetic.load_schema(CONFIG_DIR)
    meta = pq.ParquetFile(path).metadata
    assert (meta.num_rows, meta.num_row_groups) == (250, 3)
    assert schema.target not in pq.read_table(path).column_names


def test_the_command_line_writes_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    assert synthetic.main(["--config-dir", str(CONFIG_DIR), "--rows", "30", "--seed", "5", "--out", str(path)]) == 0
    expected = synthetic.from_schema(synthetic.load_schema(CONFIG_DIR), 30, 5)
    assert len(pd.read_csv(path, sep=synthetic.read_separator(CONFIG_DIR))) == len(expected)
