"""Seeded synthetic data shaped by a schema.yaml, for benchmarks and tests: every column of the right dtype, range,
allowed values and null fraction, and a target a default model can learn from a few of the features.

`from_schema` draws one frame; `write_rows` writes any number of rows as CSV (the config's separator) or Parquet
(by the file's suffix) chunk by chunk, in bounded memory, so a 10M-row input for batch scoring is made on a small
box; `generate_in_child` does that in a child process (a benchmark's own RSS stays small: see there).
Up to `chunk_rows` rows, the file holds exactly `from_schema(schema, rows, seed)`; beyond, chunk k (from 1) is drawn
with the seed [seed, k], so the same seed and chunk size give the same file.

    .venv/bin/python -m bench.synthetic --config-dir include/config --rows 10000 --out /tmp/wine.csv
    .venv/bin/python -m bench.synthetic --config-dir include/config --rows 10000000 --no-target --out /tmp/score.parquet
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench.common import PROJECT_ROOT, BenchmarkError

if TYPE_CHECKING:
    from include.ml.schema_file import ColumnSpec, SchemaConfig

CHUNK_ROWS = 1_000_000  # rows drawn and written at a time by write_rows


def write_csv(frame: pd.DataFrame, path: Path, separator: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=separator, index=False)



STRING_VOCABULARY = 20  # distinct values of a generated `string` column (one-hot encoded by the pipeline)
DEFAULT_NULL_FRACTION = 0.05


def load_schema(config_dir: Path) -> SchemaConfig:
    """The project's own checked schema (the same one the pipeline validates against)."""
    from include.ml.configuration import ConfigurationManager

    return ConfigurationManager(config_dir, env={}).config.schema


def read_separator(config_dir: Path) -> str:
    from include.ml.configuration import ConfigurationManager

    return ConfigurationManager(config_dir, env={}).config.data_source.separator


def target_column(schema: SchemaConfig) -> ColumnSpec:
    return next(c for c in schema.columns if c.name == schema.target)


def _bounds(column: ColumnSpec) -> tuple[float, float]:
    """The range to draw from: the schema's, or a made-up one of width 100 where it is open."""
    lo, hi = column.min, column.max
    if lo is None and hi is None:
        return 0.0, 100.0
    if lo is None:
        return hi - 100.0, hi  # type: ignore[operator]
    if hi is None:
        return lo, lo + 100.0
    return lo, hi


def _decimals(lo: float, hi: float) -> int:
    """Enough decimals for ~4 significant digits over the range; keeps the CSV realistic in size."""
    width = hi - lo
    return 4 if width <= 0 else int(np.clip(4 - np.floor(np.log10(width)), 0, 10))


def _float_values(latent: np.ndarray, column: ColumnSpec) -> np.ndarray:
    lo, hi = _bounds(column)
    # Rounding can step outside the range by half a unit; clipping brings it back exactly onto min/max.
    return np.clip(np.round(lo + latent * (hi - lo), _decimals(lo, hi)), lo, hi)


def _int_values(latent: np.ndarray, column: ColumnSpec) -> np.ndarray:
    lo, hi = _bounds(column)
    lo_i, hi_i = int(np.ceil(lo)), int(np.floor(hi))
    if lo_i > hi_i:
        raise BenchmarkError(f"int column {column.name!r}: no integer between min {lo} and max {hi}")
    return np.minimum(lo_i + np.floor(latent * (hi_i - lo_i + 1)).astype(np.int64), hi_i)


def _levels(column: ColumnSpec) -> list[Any]:
    listed = column.allowed or getattr(column, "categories", None)  # ordinal columns list `categories`, in order
    if listed:
        return list(listed)
    return [f"{column.name}_{i:02d}" for i in range(STRING_VOCABULARY)]


def _datetime_values(latent: np.ndarray, column: ColumnSpec) -> pd.Series:
    """Times between the column's min and max (default 2020 to 2024), whole seconds, in its `format` (epoch
    seconds for `unix`, milliseconds for `unix_ms`, ISO 8601 when absent)."""
    lo = pd.Timestamp(getattr(column, "min", None) or "2020-01-01")
    hi = pd.Timestamp(getattr(column, "max", None) or "2024-12-31")
    seconds = np.floor(latent * (hi - lo).total_seconds()).astype(np.int64)
    stamps = pd.DatetimeIndex(lo + pd.to_timedelta(seconds, unit="s"))
    form = getattr(column, "format", None)
    if form in ("unix", "unix_ms"):
        epoch = (stamps - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
        return pd.Series(np.asarray(epoch) * (1000 if form == "unix_ms" else 1), name=column.name)
    return pd.Series(np.asarray(stamps.strftime(form or "%Y-%m-%dT%H:%M:%S"), dtype=object), name=column.name,
                     dtype=object)


def feature_values(latent: np.ndarray, column: ColumnSpec) -> tuple[pd.Series, np.ndarray]:
    """The column drawn from uniform `latent` values, and the signal the target may use (in [0, 1])."""
    if column.dtype == "float":
        values = _float_values(latent, column)
        return pd.Series(values, name=column.name), latent
    if column.dtype == "int":
        values = _int_values(latent, column)
        return pd.Series(values, name=column.name), latent
    if column.dtype == "datetime":
        return _datetime_values(latent, column), latent
    if column.dtype in ("category", "string", "ordinal"):
        levels = _levels(column)
        index = np.minimum(np.floor(latent * len(levels)).astype(np.int64), len(levels) - 1)
        signal = (index + 0.5) / len(levels)
        if all(isinstance(v, str) for v in levels):
            series = pd.Series(np.asarray(levels, dtype=object)[index], name=column.name, dtype=object)
        else:  # e.g. allowed: [1, 2, 3] or booleans: keep the original values
            series = pd.Series(pd.array(levels)[index], name=column.name)
        return series, signal
    raise BenchmarkError(f"column {column.name!r}: unsupported dtype {column.dtype!r}")


def _with_nulls(series: pd.Series, column: ColumnSpec, rng: np.random.Generator) -> pd.Series:
    if not column.nullable:
        return series
    fraction = min(DEFAULT_NULL_FRACTION, column.max_null_fraction / 2)
    missing = rng.random(len(series)) < fraction
    if column.dtype == "int":
        series = series.astype("Int64")  # stays integral in the CSV; read back as float, which is accepted
    elif column.dtype == "float":
        series = series.astype("float64")
    else:
        series = series.astype(object)
    series[missing] = pd.NA if column.dtype == "int" else (np.nan if column.dtype == "float" else None)
    return series


def _score(signals: list[np.ndarray], rng: np.random.Generator, noise: float) -> np.ndarray:
    """A noisy, non-linear, standardised function of a few feature signals."""
    n = len(signals[0])
    shapes = (lambda s: s, lambda s: np.sin(np.pi * s), lambda s: (s - 0.5) ** 2, lambda s: np.sqrt(s))
    weights = (1.0, 0.8, -2.0, 0.6)
    score = np.zeros(n)
    for i, signal in enumerate(signals):
        score += weights[i % len(weights)] * shapes[i % len(shapes)](signal)
    if len(signals) >= 2:
        score += 0.5 * signals[0] * signals[1]  # an interaction, so trees have something to find
    std = score.std()
    score = (score - score.mean()) / (std if std > 0 else 1.0)
    return score + rng.normal(0.0, noise, n)


def _class_labels(column: ColumnSpec, max_classes: int = 5) -> list[Any]:
    if column.dtype == "int":
        lo, hi = _bounds(column)
        lo_i, hi_i = int(np.ceil(lo)), int(np.floor(hi))
        candidates = np.unique(np.linspace(lo_i, hi_i, min(max_classes, hi_i - lo_i + 1)).round().astype(np.int64))
        return [int(v) for v in candidates]
    if column.allowed:
        return list(column.allowed)
    return [f"class_{i}" for i in range(3)]


def target_values(score: np.ndarray, schema: SchemaConfig) -> pd.Series:
    column = target_column(schema)
    if schema.task == "classification":
        labels = _class_labels(column)
        # Equal-probability bins of the score: balanced classes, so the stratified split always works.
        edges = np.quantile(score, np.linspace(0, 1, len(labels) + 1)[1:-1])
        index = np.searchsorted(edges, score)
        if column.dtype == "int":
            return pd.Series(np.asarray(labels, dtype=np.int64)[index], name=column.name)
        if all(isinstance(v, str) for v in labels):
            return pd.Series(np.asarray(labels, dtype=object)[index], name=column.name, dtype=object)
        return pd.Series(pd.array(labels)[index], name=column.name)
    # Regression: squash the score into the column's range, centred with most mass inside it.
    squashed = 1.0 / (1.0 + np.exp(-1.2 * score))
    if column.dtype == "int":
        return pd.Series(_int_values(squashed, column), name=column.name)
    return pd.Series(_float_values(squashed, column), name=column.name)


def from_schema(schema: SchemaConfig, rows: int, seed: int, noise: float = 0.3, informative: int = 4) -> pd.DataFrame:
    """`rows` rows that satisfy every column's dtype, range and allowed values; the target is learnable from up to
    `informative` feature columns (numeric ones first). Columns that are not features (ids, ignored) get values
    too but never carry the signal."""
    rng = np.random.default_rng(seed)
    data: dict[str, pd.Series] = {}
    signals: list[np.ndarray] = []
    others = [c for c in schema.columns if c.name != schema.target]
    features = [i for i, c in enumerate(others) if getattr(c, "role", "feature") == "feature"]
    # Prefer numeric features as the informative ones; fall back to whatever there is.
    chosen = set(sorted(features, key=lambda i: (others[i].dtype not in ("float", "int"), i))[:informative])
    for i, column in enumerate(others):
        series, signal = feature_values(rng.random(rows), column)
        if i in chosen:
            signals.append(signal)
        data[column.name] = _with_nulls(series, column, rng)
    data[schema.target] = target_values(_score(signals, rng, noise), schema)
    return pd.DataFrame({c.name: data[c.name] for c in schema.columns})


def chunk_seed(seed: int, chunk: int) -> int | list[int]:
    """The seed of chunk `chunk` of a file: the file's own for the first, so a one-chunk file is from_schema's."""
    return seed if chunk == 0 else [seed, chunk]


def write_rows(config_dir: Path, rows: int, seed: int, path: Path, target: bool = True,
               chunk_rows: int = CHUNK_ROWS) -> int:
    """Write `rows` rows shaped by config_dir's schema.yaml to `path`, `chunk_rows` at a time: Parquet (one row group
    per chunk) for a .parquet suffix, else CSV with the config's separator. Without `target`, the target column is
    left out (a file to score). Returns the bytes written."""
    if rows < 0 or chunk_rows < 1:
        raise BenchmarkError(f"rows must be >= 0 and chunk_rows >= 1, got {rows} and {chunk_rows}")
    schema = load_schema(config_dir)
    parquet = path.suffix == ".parquet"
    separator = "," if parquet else read_separator(config_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer: Any = None
    try:
        for chunk, first in enumerate(range(0, max(rows, 1), chunk_rows)):
            frame = from_schema(schema, min(chunk_rows, rows - first), chunk_seed(seed, chunk))
            if not target:
                frame = frame.drop(columns=schema.target)
            if parquet:
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
            else:
                frame.to_csv(path, sep=separator, index=False, header=chunk == 0, mode="w" if chunk == 0 else "a")
    finally:
        if writer is not None:
            writer.close()
    return path.stat().st_size


def generate_in_child(config_dir: Path, rows: int, seed: int, path: Path, target: bool = True) -> float:
    """Generate the data in a separate process (`python -m bench.synthetic`) and return the seconds it took.

    Keeping the big frame out of this process matters for the measurements: on Linux a child's
    ru_maxrss starts from the RSS of the process that spawned it (it is carried across fork/exec),
    so a parent that once held a million-row frame would inflate every stage's peak."""
    command = [sys.executable, "-m", "bench.synthetic", "--config-dir", str(config_dir), "--rows", str(rows),
               "--seed", str(seed), "--out", str(path), *([] if target else ["--no-target"])]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"generating {rows} rows failed:\n{done.stderr[-5000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", type=Path, required=True, help="the config dir whose schema.yaml to follow")
    parser.add_argument("--out", type=Path, required=True, help="the file to write: .parquet, or CSV")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=20240601, help="numpy default_rng seed")
    parser.add_argument("--no-target", action="store_true", help="leave the target column out (a file to score)")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="rows drawn and written at a time")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    size = write_rows(args.config_dir, args.rows, args.seed, args.out, not args.no_target, args.chunk_rows)
    print(f"wrote {args.out} ({args.rows:,} rows, {size / 2**20:.1f} MB) in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
