"""Explanations at evaluate (include/ml/components/explanations.py): the card's "What drives predictions", the
leakage warning (log, run summary, MLflow tags, card; leakage.fail refuses promotion), and the reference attribution
profile. Generated tables: one with a column that is the target plus noise, one without."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape

from include.ml import registry
from include.ml.components import card as model_card
from include.ml.components import explanations, plots
from include.ml.components.evaluation import evaluate
from include.ml.components.gate import GateDecision, refuse_leakage
from include.ml.components.training import train
from include.ml.config_file import MlflowConfig
from include.ml.configuration import ConfigurationManager
from include.ml.entities import EvaluationConfig, TrainingConfig
from include.ml.exceptions import ConfigError
from include.ml.params_file import LeakagePolicy, ModelConfig, PromotionConfig
from include.ml.schema_file import ColumnSpec, SchemaConfig
from tests.support.frames import mixed_dataset, mixed_schema

WARNED = re.compile(r"possible leakage: leak alone explains almost all of the model's score \(.*\): "
                    r"is leak known at prediction time\?")


def table_schema(task: str) -> SchemaConfig:
    target = ColumnSpec(name="y", dtype="float") if task == "regression" else \
        ColumnSpec(name="y", dtype="category", allowed=("a", "b", "c"))
    return SchemaConfig(task=task, target="y", columns=(
        ColumnSpec(name="x1", dtype="float"), ColumnSpec(name="x2", dtype="float"),
        ColumnSpec(name="x3", dtype="float"), ColumnSpec(name="leak", dtype="float"), target))


def table(task: str, rows: int, leaking: bool, seed: int = 0) -> pd.DataFrame:
    """y from x1, x2, x3 alike (none of them dominates); `leak` is the target plus a little noise (leaking) or
    unrelated noise (not)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    signal = x.sum(axis=1) + rng.normal(scale=0.3, size=rows)
    y = signal if task == "regression" else np.select([signal < -0.8, signal < 0.8], ["a", "b"], "c")
    code = signal if task == "regression" else np.select([signal < -0.8, signal < 0.8], [0.0, 1.0], 2.0)
    leak = code + rng.normal(scale=0.05, size=rows) if leaking else rng.normal(size=rows)
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "leak": leak, "y": y})


def fitted(task: str, family: str, frame: pd.DataFrame, mlflow_config: MlflowConfig, tmp_path: Path, run_id: str,
           **hyper):
    config = TrainingConfig(table_schema(task), ModelConfig(family=family, random_state=0, hyperparameters=hyper),
                            mlflow_config, MappingProxyType({"git_sha": "test"}))
    return train(frame, config, run_id, tmp_path / run_id, dataset_source="/data/generated.csv")


def evaluation(task: str, mlflow_config: MlflowConfig, **leakage) -> EvaluationConfig:
    metric = "rmse" if task == "regression" else "f1_macro"
    return EvaluationConfig(table_schema(task), PromotionConfig(metric=metric), mlflow_config,
                            leakage=LeakagePolicy(**leakage))


# --- the rules, on their own ---------------------------------------------------------------------------------

def test_a_dominant_share_or_a_strong_single_column_model_is_flagged_by_name() -> None:
    policy = LeakagePolicy()
    (leak,) = explanations.find_leaks({"dep_delay": 7.0, "distance": 2.0, "carrier": 1.0}, {}, policy)
    assert leak.column == "dep_delay" and leak.evidence == ("70% of the mean |attribution|, leakage.share 60%",)
    assert leak.message().endswith("is dep_delay known at prediction time?")
    # A share below 60 %, but a model of that column alone reaches 95 % of the full model's skill.
    (alone,) = explanations.find_leaks({"a": 5.0, "b": 3.0, "c": 2.0}, {"a": 0.95, "b": 0.4}, policy,
                                       "random_forest", "test R^2")
    assert alone.column == "a"
    assert alone.evidence == ("a random_forest model of a alone reaches 95% of the full model's test R^2, "
                              "leakage.single_column 90%",)
    assert explanations.find_leaks({"a": 5.0, "b": 3.0, "c": 2.0}, {"a": 0.89}, policy) == ()
    # The thresholds are params.yaml's; a model of one input explains everything by that input: never flagged.
    assert explanations.find_leaks({"a": 5.0, "b": 3.0, "c": 2.0}, {}, LeakagePolicy(share=0.5))[0].column == "a"
    assert explanations.find_leaks({"only": 1.0}, {"only": 1.0}, policy) == ()


def test_the_skill_is_r2_or_auc_above_chance() -> None:
    assert explanations.skill("regression", {"r2": 0.8, "rmse": 1.0}) == 0.8
    assert explanations.skill("classification", {"roc_auc": 0.75}) == pytest.approx(0.5)
    assert explanations.skill("classification", {"accuracy": 0.9}) is None  # no AUC on these rows


def test_leakage_fail_refuses_a_promotion_unless_forced() -> None:
    promoted = GateDecision(True, "no champion yet", "rmse", 1.0, None, None)
    warning = ("possible leakage: leak alone explains ...: is leak known at prediction time?",)
    assert refuse_leakage(promoted, warning, fail=False) == promoted  # a warning only
    assert refuse_leakage(promoted, (), fail=True) == promoted
    refused = refuse_leakage(promoted, warning, fail=True)
    assert not refused.promoted and refused.reason == f"refused by leakage.fail: {warning[0]}"
    forced = refuse_leakage(promoted, warning, fail=True, force=True)
    assert forced.promoted and "over a leakage warning (leakage.fail)" in forced.reason
    kept = GateDecision(False, "not better: ...", "rmse", 1.0, 0.9, "1")
    assert refuse_leakage(kept, warning, fail=True) == kept


def test_leakage_params_default_document_and_check(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d.pop("leakage", None))
    assert ConfigurationManager(config_dir, env={}).evaluation().leakage == LeakagePolicy(
        share=0.6, single_column=0.9, fail=False, rows=500, seconds=10.0)
    edit_yaml(config_dir / "params.yaml", lambda d: d.update(leakage={"fail": True, "rows": 100}))
    assert ConfigurationManager(config_dir, env={}).evaluation().leakage.fail
    for wrong, says in (({"share": 1.5}, r"leakage.share"), ({"fail": "yes"}, r"leakage.fail"),
                        ({"rows": 2}, r"leakage.rows"), ({"seconds": 0}, r"leakage.seconds"),
                        ({"shares": 0.5}, r"leakage.shares: unknown key; expected one of: fail, rows, seconds, "
                                          r"share, single_column")):
        edit_yaml(config_dir / "params.yaml", lambda d, wrong=wrong: d.update(leakage=wrong))
        with pytest.raises(ConfigError, match=says):
            ConfigurationManager(config_dir, env={})
    shipped = (Path(__file__).resolve().parents[2] / "include/config/params.yaml").read_text()
    documented = (Path(__file__).resolve().parents[2] / "docs/configuration.md").read_text()
    for key in LeakagePolicy.model_fields:
        assert f"\n  {key}:" in shipped and f"| `leakage.{key}` |" in documented


# --- sampling within the time budget ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Fake:
    contributions: np.ndarray
    output: str = "value"


class Slow:
    """An explainer taking `per_row` seconds a row."""

    method = "tree_shap"

    def __init__(self, per_row: float) -> None:
        self.per_row, self.rows = per_row, 0
        self.inputs = ("x1", "x2", "x3", "leak")

    def explain(self, columns: dict[str, np.ndarray]) -> Fake:
        rows = len(next(iter(columns.values())))
        time.sleep(self.per_row * rows)
        self.rows += rows
        return Fake(np.ones((rows, 1, len(columns))))


def test_rows_explained_are_capped_by_count_and_by_the_time_a_row_takes() -> None:
    frame = table("regression", 800, leaking=False).drop(columns="y")
    fast = explanations.explain_sample(Slow(0.0), frame, LeakagePolicy(rows=500), "test")
    assert len(fast.frame) == 500 and fast.explanations.contributions.shape == (500, 1, 4)
    assert fast.frame.index.is_unique and set(fast.frame.index) <= set(frame.index)
    slow = Slow(0.01)  # 10 ms a row against a 0.3 s budget: about 30 rows, not 500
    sampled = explanations.explain_sample(slow, frame, LeakagePolicy(rows=500, seconds=0.3), "test")
    assert 6 <= len(sampled.frame) <= 40 and slow.rows == len(sampled.frame) == len(sampled.explanations.contributions)
    assert sampled.seconds < 1.0
    few = explanations.explain_sample(Slow(0.0), frame.head(3), LeakagePolicy(), "test")
    assert len(few.frame) == 3


# --- the plots of every dtype ----------------------------------------------------------------------------------

def test_every_dtype_is_plotted_by_its_value() -> None:
    schema = mixed_schema("regression")
    frame = mixed_dataset("regression", rows=120)[[c.name for c in schema.features]]
    specs = {c.name: c for c in schema.features}
    when, labels = plots.plotted_values(frame["when"], specs["when"])
    assert not labels and 2020 <= np.nanmin(when) and np.nanmax(when) < 2022
    grade, labels = plots.plotted_values(frame["grade"], specs["grade"])
    assert labels == ["low", "mid", "high"] and set(grade) == {0.0, 1.0, 2.0}
    plate, labels = plots.plotted_values(frame["plate"], specs["plate"])
    assert len(labels) == plots.SHOWN and np.isnan(plate[frame["plate"].isna().to_numpy()]).all()
    x1, labels = plots.plotted_values(frame["x1"], specs["x1"])
    np.testing.assert_array_equal(x1, frame["x1"].to_numpy())
    rng = np.random.default_rng(0)
    contributions = rng.normal(size=(len(frame), len(frame.columns)))
    mean_abs = explanations.ranked(dict(zip(frame.columns, np.abs(contributions).mean(axis=0))))
    drawn = plots.explanation_plots(schema, frame, contributions, mean_abs, "the prediction", 3)
    assert list(drawn) == [plots.ATTRIBUTION, plots.BEESWARM, plots.DEPENDENCE]
    assert all(png.startswith(b"\x89PNG") for png in drawn.values())


def test_the_swarm_spreads_crowded_points_within_its_row() -> None:
    offsets = plots._swarm(np.r_[np.zeros(50), np.linspace(1, 2, 5)])
    assert np.abs(offsets).max() <= 0.4 and len(set(offsets[:50])) == 50 and (offsets[50:] == 0).all()
    assert (plots._swarm(np.ones(4)) == 0).all()


# --- at evaluate, end to end -----------------------------------------------------------------------------------

def test_a_leaking_column_is_warned_of_in_the_log_summary_tags_and_card(mlflow_config: MlflowConfig,
                                                                        tmp_path: Path, caplog, capsys) -> None:
    import mlflow

    import main
    from include.pipeline import StageOutcome

    frame = table("regression", 600, leaking=True)
    trained = fitted("regression", "random_forest", frame.iloc[:450], mlflow_config, tmp_path, "leaky",
                     n_estimators=20)
    with caplog.at_level(logging.WARNING, logger="include.ml.components.explanations"):
        result = evaluate(frame.iloc[450:], evaluation("regression", mlflow_config), trained, tmp_path / "e",
                          train_frame=frame.iloc[:450])
    (warning,) = result.leakage
    assert WARNED.fullmatch(warning), warning
    assert warning in caplog.text
    assert warning in result.summary() and result.xcom()["leakage_warning"] == [warning]
    main._print_summary("run-1", [StageOutcome("evaluate", 1.0, result)])  # what `main.py run` prints at its end
    assert f"WARNING {warning}\n" in capsys.readouterr().out
    assert result.decision.promoted  # a warning, not a gate failure (leakage.fail false)
    assert mlflow.get_run(trained.mlflow_run_id).data.tags["leakage_warning"] == warning
    version = mlflow.MlflowClient().get_model_version("unit-model", result.version)
    assert version.tags["leakage_warning"] == warning and "Leakage warning" in version.description
    markdown = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.MARKDOWN).read_text()
    html = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.HTML).read_text()
    assert f"> **Leakage warning**: {escape(warning)}" in markdown  # the card escapes every value
    assert html.count('class="leakage"') == 2 and "is leak known at prediction time?" in html
    assert json.loads((tmp_path / "e" / "result.json").read_text())["leakage"] == [warning]


def test_a_table_without_a_leaking_column_gets_no_warning(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    import mlflow

    frame = table("regression", 600, leaking=False)
    trained = fitted("regression", "random_forest", frame.iloc[:450], mlflow_config, tmp_path, "clean",
                     n_estimators=20)
    result = evaluate(frame.iloc[450:], evaluation("regression", mlflow_config), trained, tmp_path / "e",
                      train_frame=frame.iloc[:450])
    assert result.leakage == () and "WARNING" not in result.summary()
    assert "leakage_warning" not in mlflow.get_run(trained.mlflow_run_id).data.tags
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{trained.mlflow_run_id}/explanations/summary.json"))
    assert max(summary["shares"].values()) < 0.6 and summary["warnings"] == []
    top = sorted(summary["mean_abs"], key=lambda column: -summary["mean_abs"][column])[:3]
    assert set(summary["single_column"]) == set(top)  # the top 3 by attribution, refitted alone
    assert max(summary["single_column"].values()) < 0.9
    markdown = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.MARKDOWN).read_text()
    assert "Leakage warning" not in markdown and "## What drives predictions" in markdown


def test_leakage_fail_makes_the_gate_refuse_the_leaking_model(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    import mlflow

    frame = table("classification", 600, leaking=True)
    trained = fitted("classification", "elasticnet", frame.iloc[:450], mlflow_config, tmp_path, "leaky")
    result = evaluate(frame.iloc[450:], evaluation("classification", mlflow_config, fail=True), trained,
                      tmp_path / "e", train_frame=frame.iloc[:450])
    (warning,) = result.leakage
    assert WARNED.fullmatch(warning), warning
    assert not result.decision.promoted and result.decision.reason == f"refused by leakage.fail: {warning}"
    assert registry.champion_version("unit-model") is None  # no champion: the first version was refused
    tags = mlflow.MlflowClient().get_model_version("unit-model", result.version).tags
    assert tags["gate_decision"] == result.decision.reason and tags["leakage_warning"] == warning
    card = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.MARKDOWN).read_text()
    assert f"Not promoted: refused by leakage.fail: {escape(warning)}" in card


def test_the_card_shows_what_drives_predictions_beside_permutation_importance(mlflow_config: MlflowConfig,
                                                                              tmp_path: Path) -> None:
    import mlflow

    frame = table("regression", 400, leaking=False)
    trained = fitted("regression", "random_forest", frame.iloc[:300], mlflow_config, tmp_path, "card",
                     n_estimators=10)
    evaluate(frame.iloc[300:], evaluation("regression", mlflow_config, rows=60), trained, tmp_path / "e",
             train_frame=frame.iloc[:300])
    markdown = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.MARKDOWN).read_text()
    html = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.HTML).read_text()
    # The section follows permutation importance, one line per input column, largest first.
    assert markdown.index("## Feature importance") < markdown.index("## What drives predictions")
    assert "Attributions of 60 test rows by TreeSHAP" in markdown
    rows = re.findall(r"^\| (x1|x2|x3|leak) \| ([0-9.e-]+) \| ([0-9.]+) %", markdown, re.M)
    assert sorted(name for name, _, _ in rows) == ["leak", "x1", "x2", "x3"]
    values = [float(v) for _, v, _ in rows]
    assert values == sorted(values, reverse=True) and sum(float(s) for _, _, s in rows) == pytest.approx(100, abs=0.5)
    assert rows[-1][0] == "leak"  # unrelated noise explains least
    for title in (plots.ATTRIBUTION, plots.BEESWARM, plots.DEPENDENCE):
        assert f'<img alt="{escape(title)}" src="data:image/png;base64,' in html
    assert html.index('id="importance"') < html.index('id="what-drives-predictions"') < html.index('id="attribution"')
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(trained.mlflow_run_id, "explanations")}
    assert logged == {"explanations/mean_abs_attribution.png", "explanations/beeswarm.png",
                      "explanations/dependence.png", "explanations/summary.json",
                      "explanations/attribution_profile.json"}


def test_the_reference_profile_is_the_held_out_rows_mean_attribution(mlflow_config: MlflowConfig,
                                                                      tmp_path: Path) -> None:
    """The profile is of the explained test rows, not the training rows, which a fully grown forest reproduces noise
    included: the monitor compares it with rows the model never saw."""
    import mlflow

    from serving.explain import build_explainer

    frame = table("regression", 400, leaking=False)
    trained = fitted("regression", "random_forest", frame.iloc[:300], mlflow_config, tmp_path, "profile",
                     n_estimators=10)
    evaluate(frame.iloc[300:], evaluation("regression", mlflow_config, rows=50), trained, tmp_path / "e",
             train_frame=frame.iloc[:300])
    written = json.loads((tmp_path / "e" / explanations.PROFILE).read_text())
    logged = json.loads(mlflow.artifacts.load_text(
        f"runs:/{trained.mlflow_run_id}/{explanations.ARTIFACT_DIR}/{explanations.PROFILE}"))
    assert written == logged
    assert set(written) == {"columns", "rows", "method", "output"}
    assert set(written["columns"]) == {"x1", "x2", "x3", "leak"} and written["rows"] == 50
    assert written["method"] == "tree_shap" and written["output"] == "value"
    features = ["x1", "x2", "x3", "leak"]
    model = registry.load_model(trained.model_uri)
    explainer = build_explainer(model, features)
    held_out = explanations.explain_sample(explainer, frame.iloc[300:][features], LeakagePolicy(rows=50), "test")
    assert written["columns"] == pytest.approx(held_out.explanations.mean_abs(), rel=1e-9)
    # Without the training split: no single-column check, but the card's summary and the profile.
    again = evaluate(frame.iloc[300:], evaluation("regression", mlflow_config, rows=50), trained, tmp_path / "e2")
    assert (tmp_path / "e2" / explanations.PROFILE).exists() and again.leakage == ()
    assert "## What drives predictions" in (tmp_path / "e2" / "card" / model_card.MARKDOWN).read_text()


def test_the_issues_flights_table_flags_dep_delay_when_predicting_arrival_delay() -> None:
    """The table that showed the leak (nycflights13-like: arr_delay is dep_delay plus noise), with every kind of
    column (clock fields, a datetime, open categories target-encoded, listed ones split natively), as `main.py init`
    drafts it for hist_gradient_boosting: dep_delay alone is flagged, by name."""
    from include.ml.metrics import compute_metrics
    from serving.explain import build_explainer
    from tests.support.frames import flights_like, pipeline_for

    numbers = ("month", "day", "dep_time", "sched_dep_time", "dep_delay", "flight", "distance", "hour", "minute")
    schema = SchemaConfig(task="regression", target="arr_delay", columns=(
        *(ColumnSpec(name=n, dtype="float", nullable=True) for n in numbers),
        ColumnSpec(name="year", dtype="int", role="ignore"),
        ColumnSpec(name="carrier", dtype="category", allowed=("UA", "B6", "EV", "DL", "AA", "MQ")),
        ColumnSpec(name="tailnum", dtype="category", nullable=True),
        ColumnSpec(name="origin", dtype="category", allowed=("EWR", "JFK", "LGA")),
        ColumnSpec(name="dest", dtype="category"),
        ColumnSpec(name="time_hour", dtype="datetime", format="%Y-%m-%d %H:%M:%S"),
        ColumnSpec(name="arr_delay", dtype="float")))
    frame = flights_like(4000).dropna(subset=["arr_delay"])
    train, test = frame.iloc[:3000], frame.iloc[3000:]
    features = [c.name for c in schema.features]
    model = pipeline_for(schema, "hist_gradient_boosting", {}).fit(train[features], train["arr_delay"])
    scores = compute_metrics("regression", model, test[features], test["arr_delay"])
    config = EvaluationConfig(schema, PromotionConfig(metric="rmse"),
                              MlflowConfig(experiment_name="unused", registered_model_name="unused"))
    sample = explanations.explain_sample(build_explainer(model, features), test[features], LeakagePolicy(), "test")
    mean_abs = explanations.ranked(sample.explanations.mean_abs())
    assert next(iter(mean_abs)) == "dep_delay"
    single = explanations.single_column_ratios(model, config, "hist_gradient_boosting", train, test[features],
                                               test["arr_delay"], scores, list(mean_abs)[:3])
    assert single["dep_delay"] >= 0.9 and all(v < 0.5 for c, v in single.items() if c != "dep_delay")
    (leak,) = explanations.find_leaks(mean_abs, single, LeakagePolicy(), "hist_gradient_boosting", "test R^2")
    assert leak.column == "dep_delay" and leak.message().endswith("is dep_delay known at prediction time?")
