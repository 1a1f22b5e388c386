"""The champion/challenger gate: whether a registered version replaces the champion.

The challenger is promoted when there is no champion, or when it beats the champion on `promotion.metric`, both
scored on the same test set, by at least `promotion.min_improvement` (absolute, or a share of the champion's value).
A champion is weighed only when its feature contract matches the challenger's (read from its MLmodel file, never by
loading the model) and it can be scored; otherwise the gate refuses (a ChampionGateError) unless forced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from include.ml import registry
from include.ml.entities import EvaluationConfig
from include.ml.exceptions import (
    ChampionGateError,
    IncompatibleChampionError,
    PipelineError,
    UnscorableChampionError,
)
from include.ml.metrics import compute_metrics
from include.ml.params_file import PromotionConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    champion_version: str | None


def weigh(config: EvaluationConfig, version: str, scores: dict[str, float], x: pd.DataFrame, y: pd.Series,
          force: bool = False) -> tuple[GateDecision, dict[str, float]]:
    """The gate's decision on registered `version` (its test-set `scores`) against the current champion, which is
    scored on the same rows `x`, `y`; and the champion's scores ({} when there is none, or it was not scored).

    A champion that cannot be weighed raises its ChampionGateError, after tagging `version` with why (the alias
    stays); with `force` the challenger is promoted over it instead, and the reason says so.
    """
    import mlflow

    name, metric = config.mlflow.registered_model_name, config.promotion.metric
    current = registry.champion_version(name)
    if current == version:  # a retry of an evaluation that already promoted this version
        return GateDecision(False, f"v{version} is already the champion", metric, scores[metric], scores[metric],
                            current), scores
    try:
        champion = None if current is None else score_champion(config, current, f"{name} v{version}", x, y)
        return decide(scores, champion, current, config.promotion, force), champion or {}
    except ChampionGateError as refused:
        if not force:  # the alias stays; the version says why it was not weighed
            mlflow.tracking.MlflowClient().set_model_version_tag(name, version, "gate_decision",
                                                                 f"refused: {refused.problem}")
            raise
        decision = GateDecision(True, f"forced promotion over {refused.problem}", metric, scores[metric], None,
                                current)
        log.warning("evaluate: %s v%s: %s", name, version, decision.reason)
        return decision, {}


def decide(challenger: dict[str, float], champion: dict[str, float] | None, champion_version: str | None,
           promotion: PromotionConfig, force: bool = False) -> GateDecision:
    """Promote when there is no champion, or the challenger beats it by at least the margin.

    A champion that could not be scored (`champion` None or without the metric) is never replaced silently:
    UnscorableChampionError, unless `force`.
    """
    metric = promotion.metric
    if metric not in challenger:
        raise PipelineError(f"promotion metric {metric!r} is undefined on this test set; computed: {list(challenger)}")
    new = challenger[metric]
    old = None if champion is None else champion.get(metric)
    if force:
        return GateDecision(True, "forced promotion", metric, new, old, champion_version)
    if champion_version is None:
        return GateDecision(True, "no champion yet", metric, new, None, None)
    if old is None:
        raise UnscorableChampionError(champion_version, "no scores given" if champion is None
                                      else f"its {metric} is undefined on this test set")
    gain = (new - old) if promotion.higher_is_better else (old - new)
    better = "higher" if promotion.higher_is_better else "lower"
    margin = promotion.margin(old)
    kind = (f"{promotion.min_improvement} of the champion's value, relative margin" if promotion.relative
            else "absolute margin")
    versus = f"{metric} {new:.4f} vs champion v{champion_version} {old:.4f}"
    if gain >= margin and gain > 0:
        return GateDecision(True, f"better: {versus} ({better} is better; margin {margin:.4g}, {kind})", metric, new,
                            old, champion_version)
    return GateDecision(False, f"not better: {versus}; needs to be {better} by at least {margin:.4g} ({kind})",
                        metric, new, old, champion_version)


def refuse_leakage(decision: GateDecision, warnings: Sequence[str], fail: bool,
                   force: bool = False) -> GateDecision:
    """With params.yaml's leakage.fail, a leakage warning (include/ml/components/explanations.py) is a gate failure:
    a promotion becomes a refusal whose reason is the warning. A forced promotion still promotes and says what it
    overrode; without leakage.fail a warning changes nothing."""
    if not (warnings and fail and decision.promoted):
        return decision
    if force:
        return replace(decision, reason=f"{decision.reason} over a leakage warning (leakage.fail): {warnings[0]}")
    return replace(decision, promoted=False,
                   reason=f"refused by leakage.fail: {'; '.join(warnings)}")


def contract_differences(champion: Mapping[str, Any] | None, challenger: Mapping[str, Any]) -> list[str]:
    """What differs between two models' feature contracts: task, target, feature names and dtypes. Ranges,
    allowed values and nullability may evolve between versions; these may not."""
    if not champion:
        return ["its MLmodel holds no feature_contract, so nothing shows it is compatible"]
    differences = [f"{key} {champion.get(key)!r} (champion) vs {challenger.get(key)!r} (challenger)"
                   for key in ("task", "target") if champion.get(key) != challenger.get(key)]
    old = {f["name"]: f["dtype"] for f in champion.get("features", [])}
    new = {f["name"]: f["dtype"] for f in challenger.get("features", [])}
    if removed := sorted(old.keys() - new.keys()):
        differences.append(f"features the challenger lacks: {_listed(removed)}")
    if added := sorted(new.keys() - old.keys()):
        differences.append(f"features new in the challenger: {_listed(added)}")
    if changed := [f"{n} {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]:
        differences.append(f"dtypes changed (champion -> challenger): {_listed(changed)}")
    return differences


def _listed(items: list[str], most: int = 10) -> str:
    """A short list: the gate's reason ends up in size-limited MLflow tags (champion_history)."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def stored_contract(model_name: str, version: str) -> dict[str, Any] | None:
    """The feature_contract training stored in a registered version's MLmodel metadata. Only that YAML file is
    downloaded: the model itself is not deserialized (one built for other data need not even load)."""
    import tempfile

    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="mlmodel-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}/MLmodel",
                                                   dst_path=tmp)
        mlmodel = yaml.safe_load(Path(path).read_text())
    return (mlmodel.get("metadata") or {}).get("feature_contract")


def score_champion(config: EvaluationConfig, version: str, challenger: str, x: pd.DataFrame,
                   y: pd.Series) -> dict[str, float]:
    """The champion's metrics on this test set, or a ChampionGateError: its contract differs from the
    challenger's (checked before the model is loaded), or it fails to load, predict or yield the gate's metric."""
    name = config.mlflow.registered_model_name
    try:
        contract = stored_contract(name, version)
    except Exception as exc:  # the registry or artifact store failed: nothing to compare against
        raise UnscorableChampionError(version, f"its MLmodel could not be read: {exc}", challenger) from exc
    differences = contract_differences(contract, config.schema.feature_contract())
    if differences:
        raise IncompatibleChampionError(version, differences, challenger)
    try:
        model = registry.load_model(f"models:/{name}/{version}")
        scores = compute_metrics(config.schema.task, model, x, y)
    except Exception as exc:  # whatever the cause, an unscored champion must not be replaced silently
        raise UnscorableChampionError(version, f"{type(exc).__name__}: {exc}", challenger) from exc
    if config.promotion.metric not in scores:
        raise UnscorableChampionError(version, f"its {config.promotion.metric} is undefined on this test set",
                                      challenger)
    return scores
