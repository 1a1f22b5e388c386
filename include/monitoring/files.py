"""`main.py monitor --reference A.csv --current B.csv`: two CSV files with the same columns compared feature by feature.

Columns of schema.yaml are tested as its dtype says (a numeric column must parse as numbers, a datetime is parsed in
its format; drift.py says what is compared of it); any other column is numeric when the reference's values all are.
The target, id and ignored columns are left out wherever they appear.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from include.ml.exceptions import MonitoringError
from include.ml.params_file import MonitoringPolicy
from include.ml.schema_file import SchemaConfig
from include.monitoring.drift import DriftReport, Kind, compare


def read_csv(path: Path, separator: str, role: str) -> pd.DataFrame:
    if not path.is_file():
        raise MonitoringError(f"the {role} file {path} does not exist")
    try:
        frame = pd.read_csv(path, sep=separator)
    except pd.errors.EmptyDataError:
        raise MonitoringError(f"the {role} file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MonitoringError(f"the {role} file {path} is not a CSV with separator {separator!r}: {exc}") from exc
    if frame.empty:
        raise MonitoringError(f"the {role} file {path} has a header but no rows")
    return frame


def compare_files(reference_path: Path, current_path: Path, schema: SchemaConfig, separator: str,
                  params: MonitoringPolicy) -> DriftReport:
    left_out = [schema.target, *(c.name for c in (*schema.ids, *schema.ignored))]
    reference = read_csv(reference_path, separator, "reference").drop(columns=left_out, errors="ignore")
    current = read_csv(current_path, separator, "current").drop(columns=left_out, errors="ignore")
    if set(reference.columns) != set(current.columns):
        only_ref = sorted(set(reference.columns) - set(current.columns))
        only_cur = sorted(set(current.columns) - set(reference.columns))
        raise MonitoringError(f"the files have different columns: only in the reference {only_ref}, only in the "
                              f"current {only_cur} (is data_source.separator {separator!r} right?)")
    specs = {c.name: c for c in schema.features}
    kinds: dict[str, Kind] = {}
    for name in reference.columns:
        spec = specs.get(name)
        if spec is not None and spec.dtype == "datetime":
            kinds[name] = "datetime"
            continue
        numeric = spec.is_numeric if spec else pd.api.types.is_numeric_dtype(reference[name])
        kinds[name] = "numeric" if numeric else "categorical"
        if numeric:
            for frame, path in ((reference, reference_path), (current, current_path)):
                frame[name] = _numbers(frame[name], name, path)
    return compare(reference, current, kinds, params, specs)


def _numbers(values: pd.Series, name: str, path: Path) -> pd.Series:
    parsed = pd.to_numeric(values, errors="coerce")
    bad = values[parsed.isna() & values.notna()]
    if not bad.empty:
        raise MonitoringError(f"{path}: column {name!r} is numeric, but {len(bad)} value(s) are not numbers, e.g. "
                              f"{bad.astype(str).head(3).tolist()} (row {int(bad.index[0]) + 2} of the file)")
    return parsed.astype(float)
