"""Attribution drift: what drives the champion's predictions on its captured traffic against what drove them on the
held-out rows of its training data.

A profile is the mean |attribution| of each input column over some rows, as serving.explain gives it (TreeSHAP for
the tree families, the exact linear attribution for ElasticNet and LogisticRegression), summed back to the column
a client sends. The reference profile is the one evaluate froze when the model was evaluated, on a sample of its
held-out test rows: the champion's MLflow run's `explanations/attribution_profile.json`, else
`<artifacts_root>/<pipeline run id>/evaluate/attribution_profile.json`. Without either (a model evaluated before
explanations existed, pruned artifacts) the champion explains a sample of the reference rows now, and the log and
the report say so. The current profile is the champion's explanation of a sample of the captured rows
(`monitoring.attribution.rows`, within `monitoring.attribution.seconds`).

The two are compared as shares (a column's value over the sum of all columns'): the output's scale cancels, what
is compared is how the model divides its attention. A column drifts when its share moved by at least
`monitoring.attribution.share_change` (absolute: 0.1 is ten points); the ratio of the shares is reported beside
it. Fewer than `monitoring.min_rows` captured rows is "not enough data", never drift; a model the explainer does not
know is "unavailable" with the reason, never a failed monitor run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml.params_file import AttributionPolicy
from include.ml.schema_file import SchemaConfig

log = logging.getLogger(__name__)

EVALUATE = "evaluate"  # the evaluate stage's output folder under <artifacts_root>/<pipeline run id>
PROFILE = "attribution_profile.json"  # in it
ARTIFACT = f"explanations/{PROFILE}"  # on the model's MLflow run
FROZEN, COMPUTED = "frozen at evaluate", "computed now"
OK, DRIFTED, NOT_ENOUGH_DATA, UNAVAILABLE = "ok", "drifted", "not enough data", "unavailable"
PREFIX = "attribution:"  # how a drifted column is named among MonitorResult.drifted
SEED = 0


@dataclass(frozen=True)
class Profile:
    columns: dict[str, float]  # input column -> mean |attribution|
    rows: int  # rows explained
    method: str  # tree_shap | linear
    output: str  # value | probability | log_odds

    def shares(self, names: tuple[str, ...]) -> dict[str, float]:
        """Each of `names`' share of the total (a column the profile lacks: 0; all 0 when the total is)."""
        values = {n: self.columns.get(n, 0.0) for n in names}
        total = sum(values.values())
        return {n: v / total if total > 0 else 0.0 for n, v in values.items()}

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "method": self.method, "output": self.output}


@dataclass(frozen=True)
class ColumnShift:
    reference: float  # mean |attribution|
    current: float
    share_reference: float
    share_current: float
    change: float  # share_current - share_reference
    ratio: float | None  # share_current / share_reference; None when the reference share is 0
    drifted: bool


@dataclass(frozen=True)
class AttributionDrift:
    status: str  # ok | drifted | not enough data | unavailable
    reference: str | None  # FROZEN | COMPUTED (None: no comparison made)
    columns: dict[str, ColumnShift]
    share_change: float
    rows_reference: int  # rows each profile explained
    rows_current: int
    method: str | None = None
    output: str | None = None
    note: str | None = None  # why there is no verdict

    @property
    def drifted(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.drifted]

    def describe(self) -> str:
        head = "attribution drift"
        if self.status in (NOT_ENOUGH_DATA, UNAVAILABLE):
            return f"{head}: {self.status} ({self.note})"
        verdict = ", ".join(self.drifted) or "none"
        return (f"{head}: {verdict} (shares of mean |attribution|, {self.method} in {self.output} space; "
                f"reference {self.reference}, {self.rows_reference} rows; current {self.rows_current} captured "
                f"rows; drift is a share moved by >= {self.share_change})")

    def details(self) -> list[str]:
        """One line per drifted column, as the log and the drift Asset's details show it."""
        return [f"{PREFIX}{name}: attribution share {c.share_reference:.3f} -> {c.share_current:.3f} "
                f"(change {c.change:+.3f}, ratio {_ratio(c.ratio)}); drift is a change of >= {self.share_change}"
                for name, c in self.columns.items() if c.drifted]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reference": self.reference, "drifted": self.drifted,
                "columns": {n: vars(c) for n, c in self.columns.items()}, "share_change": self.share_change,
                "rows": {"reference": self.rows_reference, "current": self.rows_current}, "method": self.method,
                "output": self.output, "note": self.note}


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def measure(model: Any, model_name: str, version: str, schema: SchemaConfig, reference_rows: pd.DataFrame,
            current_rows: pd.DataFrame, frozen: Profile | None, policy: AttributionPolicy,
            min_rows: int) -> AttributionDrift:
    """The champion's attribution profile on `current_rows` against `frozen` (None: computed now from
    `reference_rows`)."""
    from serving.explain import ExplainError, build_explainer

    threshold = policy.share_change
    if len(current_rows) < min_rows:
        return AttributionDrift(NOT_ENOUGH_DATA, None, {}, threshold, frozen.rows if frozen else 0,
                                len(current_rows), note=f"{len(current_rows)} captured rows, fewer than "
                                                        f"monitoring.min_rows {min_rows}")
    names = input_names(model_name, version, schema)
    try:
        explainer = build_explainer(model, names)
        reference, source = frozen, FROZEN
        if reference is None:
            reference, source = profile_of(explainer, names, reference_rows, policy), COMPUTED
            log.info("attribution: %s v%s has no attribution profile frozen at evaluate; computed now on %d of its "
                     "%d reference rows", model_name, version, reference.rows, len(reference_rows))
        current = profile_of(explainer, names, current_rows, policy)
    except ExplainError as exc:
        log.warning("attribution: %s v%s cannot be explained, no attribution drift: %s", model_name, version, exc)
        return AttributionDrift(UNAVAILABLE, None, {}, threshold, frozen.rows if frozen else 0, len(current_rows),
                                note=f"the model cannot be explained: {exc}")
    if reference.output != current.output:
        log.warning("attribution: the reference profile is in %s space, the champion explains in %s space: their "
                    "shares are compared", reference.output, current.output)
    columns = compare(reference, current, names, threshold)
    status = DRIFTED if any(c.drifted for c in columns.values()) else OK
    return AttributionDrift(status, source, columns, threshold, reference.rows, current.rows, current.method,
                            current.output)


def compare(reference: Profile, current: Profile, names: tuple[str, ...],
            share_change: float) -> dict[str, ColumnShift]:
    """Every input column's share in both profiles; drifted when it moved by at least `share_change`."""
    before, after = reference.shares(names), current.shares(names)
    columns = {}
    for name in names:
        change = after[name] - before[name]
        columns[name] = ColumnShift(
            reference.columns.get(name, 0.0), current.columns.get(name, 0.0), before[name], after[name], change,
            after[name] / before[name] if before[name] > 0 else None,
            abs(change) >= share_change - 1e-12)  # a tolerance: 0.3 - 0.2 is 0.09999999999999998
    return columns


def profile_of(explainer: Any, names: tuple[str, ...], rows: pd.DataFrame, policy: AttributionPolicy) -> Profile:
    """Mean |attribution| per input column over a seeded sample of `rows`: at most `policy.rows`, fewer when
    explaining them would take longer than `policy.seconds`."""
    from include.ml.components.explanations import explain_sample

    sample = explain_sample(explainer, rows[list(names)].reset_index(drop=True), policy, "captured",
                            "monitoring.attribution")
    return Profile({k: float(v) for k, v in sample.explanations.mean_abs().items()}, len(sample.frame),
                   explainer.method, explainer.output)


def input_names(model_name: str, version: str, schema: SchemaConfig) -> tuple[str, ...]:
    """The input columns of the contract training stored with the version (schema.yaml's when it stored none)."""
    from include.ml.components.gate import stored_contract

    stored = stored_contract(model_name, version) or schema.feature_contract()
    return tuple(str(f["name"]) for f in stored["features"])


def frozen_profile(mlflow_run_id: str, evaluate_dir: Path) -> Profile | None:
    """The profile evaluate froze: on the model's MLflow run, else in its pipeline run's evaluate folder; None
    when neither holds a readable one."""
    for where, read in ((f"run {mlflow_run_id}:{ARTIFACT}", lambda: _from_run(mlflow_run_id)),
                        (str(evaluate_dir / PROFILE), lambda: _from_file(evaluate_dir / PROFILE))):
        try:
            payload = read()
        except (OSError, ValueError) as exc:
            log.warning("attribution: the profile %s cannot be read (%s)", where, exc)
            continue
        if payload is None:
            continue
        try:
            profile = parse(payload)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("attribution: the profile %s is not a profile (%s)", where, exc)
            continue
        log.info("attribution: reference profile from %s (%d rows, %s)", where, profile.rows, profile.method)
        return profile
    return None


def parse(payload: Any) -> Profile:
    """A profile's JSON: {"columns": {col: mean |attribution|}, "rows": n, "method": ..., "output": ...}."""
    columns = {str(k): float(v) for k, v in dict(payload["columns"]).items()}
    if not columns or any(not math.isfinite(v) or v < 0 for v in columns.values()):
        raise ValueError("columns must map input columns to finite values >= 0")
    return Profile(columns, int(payload.get("rows") or 0), str(payload.get("method") or "unknown"),
                   str(payload.get("output") or "unknown"))


def _from_file(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _from_run(run_id: str) -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        if not any(a.path == ARTIFACT for a in client.list_artifacts(run_id, ARTIFACT.rpartition("/")[0])):
            return None
        with tempfile.TemporaryDirectory(prefix="attribution-") as tmp:
            return json.loads(Path(client.download_artifacts(run_id, ARTIFACT, tmp)).read_text())
    except MlflowException as exc:
        raise OSError(str(exc)) from exc
