"""The model card: built from a tiny in-memory frame's model, escaped, with placeholders for what the config leaves
out; written by evaluate into the stage dir and the run's MLflow artifacts, and set as the version's description."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.ml.components import card as model_card
from include.ml.components.evaluation import evaluate
from include.ml.components.training import build_pipeline, split_xy, train
from include.ml.config_file import CardConfig, MlflowConfig
from include.ml.configuration import ConfigurationManager
from include.ml.entities import EvaluationConfig
from include.ml.exceptions import ConfigError
from include.ml.metrics import compute_metrics
from include.ml.params_file import PromotionConfig
from include.ml.schema_file import ColumnSpec
from tests.support.frames import dataset, evaluation_config, noisy_dataset, training_config

SHA = "0123456789abcdef" * 4
FILLED = CardConfig(intended_use="Ranking wines for a tasting panel.", limitations="Red wines from one region only.",
                    owners="ml-team@example.org", license="CC BY 4.0")


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def facts() -> model_card.CardFacts:
    """A random forest fitted on a tiny frame and scored on another, as evaluate would describe it."""
    config = training_config("regression", "random_forest", MlflowConfig(registered_model_name="unit"))
    x, y = split_xy(dataset("regression", rows=60), config.schema)
    model = build_pipeline(config).fit(x, y)
    test_x, test_y = split_xy(dataset("regression", rows=30, seed=1), config.schema)
    return model_card.CardFacts(
        "tiny-model", "7", "http://127.0.0.1:5000/#/experiments/1/runs/abc", "random_forest",
        "RandomForestRegressor", model.named_steps["model"].get_params(), config.schema,
        model_card.TrainingData("data/tiny.csv", SHA, 75), 60, 30, compute_metrics("regression", model, test_x, test_y),
        "6", {"rmse": 9.25, "mae": 8.5, "r2": -1.0}, "rmse", True,
        "better: rmse 0.3 vs champion v6 9.2500 (lower is better, margin 0.001)", {"x1": 0.8, "x2": 0.3, "kind": 0.01},
        {"Residuals (test set)": _png()})


def _text(html: str) -> str:
    """The HTML without its tags and image data, whitespace collapsed: what a reader sees."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_card_names_the_model_its_data_metrics_gate_and_importance(facts: model_card.CardFacts) -> None:
    card = model_card.build(facts, FILLED)
    seen = _text(card.html)
    for text in (card.markdown, seen):
        assert "tiny-model" in text and "version 7" in text
        assert "random_forest" in text and "RandomForestRegressor" in text
        assert "n_estimators" in text and "| n_estimators | 5 |" in card.markdown  # the fitted estimator's params
        assert "data/tiny.csv" in text and SHA in text and "75 ingested, 60 for training, 30 held out" in text
        assert facts.reason in text
        for usage in ("Ranking wines for a tasting panel.", "Red wines from one region only.",
                      "ml-team@example.org", "CC BY 4.0"):
            assert usage in text
        assert "Not filled in" not in text
    # This version's metrics with the champion's beside them, the gate's metric marked.
    rmse = f"{facts.metrics['rmse']:.4f}"
    assert f"| rmse (gate) | {rmse} | 9.2500 |" in card.markdown
    assert f"rmse (gate) {rmse} 9.2500" in seen and "v6 (champion)" in seen
    # Every schema column with its type and allowed values; the target marked.
    assert "| kind | category | no | p, q | feature | one-hot columns |" in card.markdown
    assert "| y | float | no |  | target | predicted |" in card.markdown
    # Importance, highest first.
    assert seen.index("x1 0.8000") < seen.index("x2 0.3000") < seen.index("kind 0.0100")
    # The plot is inside the HTML file (a data: URI), byte for byte.
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', card.html)
    assert [base64.b64decode(data) for data in embedded] == list(facts.plots.values())
    assert 'alt="Residuals (test set)"' in card.html


def test_the_card_links_the_provenance_statement_and_says_how_to_verify_it(facts: model_card.CardFacts) -> None:
    card = model_card.build(facts, FILLED)
    for text in (card.markdown, _text(card.html)):
        assert "served at GET /provenance" in text.replace("`", "")
        assert "python main.py verify-provenance --version 7" in text.replace("`", "")
    # Relative: the card is served at /model-card, so the link reaches /provenance on the same server and prefix.
    assert '<a href="provenance"><code>GET /provenance</code></a>' in card.html


def test_description_is_the_short_form(facts: model_card.CardFacts) -> None:
    description = model_card.build(facts, FILLED).description
    lines = description.splitlines()
    assert 4 <= len(lines) <= 8, description
    assert lines[0].startswith("**tiny-model v7**")
    assert f"rmse {facts.metrics['rmse']:.4f}" in description and "champion v6: rmse 9.2500" in description
    assert f"Gate: promoted: {facts.reason}" in description
    assert "Intended use: Ranking wines for a tasting panel." in description
    assert "card/model_card.html" in description
    # However long the config's text, the registry's description stays a few short lines (MLflow caps its size).
    long = model_card.build(facts, CardConfig(intended_use="Tasting.\n" + "very " * 5000)).description
    assert len(long.splitlines()) == len(lines) and len(long) < len(description) + 400


def test_unfilled_fields_are_placeholders_that_say_so(facts: model_card.CardFacts) -> None:
    card = model_card.build(facts, CardConfig(intended_use="Only this one is given."))
    assert set(model_card.LABELS) == set(CardConfig.model_fields)
    for key in ("limitations", "owners", "license"):
        placeholder = f"Not filled in: set card.{key} in config.yaml."
        assert placeholder in card.markdown
        assert f'<p id="{key}" class="usage unfilled">{placeholder}</p>' in card.html
    assert '<p id="intended_use" class="usage">Only this one is given.</p>' in card.html
    empty = model_card.build(facts, CardConfig())
    assert "Intended use: Not filled in: set card.intended_use in config.yaml." in empty.description


def test_text_from_the_config_is_escaped_never_markup(facts: model_card.CardFacts) -> None:
    attack = '<script>alert("card")</script><img src=x onerror=alert(1)>'
    card = model_card.build(facts, CardConfig(intended_use=attack, owners="a & b"))
    for text in (card.html, card.markdown, card.description):
        assert "<script" not in text and "<img src=x" not in text
        assert "&lt;script&gt;alert(&#34;card&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "a &amp; b" in card.html
    assert "<script" not in model_card.build(facts, FILLED).html  # the card itself needs no script


def test_column_names_from_the_data_are_escaped_never_markup(facts: model_card.CardFacts) -> None:
    """A drafted schema takes its column names from a file's header: one named as markup stays text in the card."""
    name = '<svg onload="alert(1)">'
    columns = (ColumnSpec(name=name, dtype="category"), *facts.schema.columns)
    hostile = dataclasses.replace(facts, schema=facts.schema.model_copy(update={"columns": columns}),
                                  importance={name: 0.5, **facts.importance}, hyperparameters={"note": name})
    card = model_card.build(hostile, FILLED)
    for text in (card.html, card.markdown, card.description):
        assert "<svg" not in text
    assert card.html.count("&lt;svg onload=&#34;alert(1)&#34;&gt;") >= 3  # the schema, the inputs, the importance


def test_card_section_is_optional_and_checked(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "config.yaml", lambda d: d.pop("card", None))
    cm = ConfigurationManager(config_dir, env={})
    assert cm.evaluation().card == CardConfig()  # all placeholders, no error
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(card={"intended_use": "Demo.", "owner": "me"}))
    with pytest.raises(ConfigError, match=r"config.yaml: card.owner: unknown key; expected one of: intended_use, "
                                          r"license, limitations, owners"):
        ConfigurationManager(config_dir, env={})
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(card={"license": 3}))
    with pytest.raises(ConfigError, match=r"card.license: expected str, got int 3"):
        ConfigurationManager(config_dir, env={})
    edit_yaml(config_dir / "config.yaml", lambda d: d.update(card={"intended_use": "Demo."}))
    assert ConfigurationManager(config_dir, env={}).evaluation().card.intended_use == "Demo."


def test_evaluate_logs_every_versions_card_and_sets_its_description(mlflow_config: MlflowConfig,
                                                                     tmp_path: Path) -> None:
    import mlflow

    test = dataset("regression", rows=40, seed=9)
    config = evaluation_config("regression", mlflow_config)
    config = EvaluationConfig(config.schema, config.promotion, config.mlflow, FILLED)
    data = model_card.TrainingData("/data/unit.csv", SHA, 160)
    runs = [train(dataset("regression"), training_config("regression", "elasticnet", mlflow_config), run_id,
                  tmp_path / run_id, dataset_source="/data/unit.csv") for run_id in ("a", "b")]
    results = [evaluate(test, config, trained, tmp_path / f"e{i}", data=data) for i, trained in enumerate(runs)]
    assert [r.decision.promoted for r in results] == [True, False]
    client = mlflow.MlflowClient()
    for result, trained in zip(results, runs):
        logged = {a.path for a in client.list_artifacts(trained.mlflow_run_id, model_card.ARTIFACT_DIR)}
        assert logged == {"card/model_card.md", "card/model_card.html"}
        html = mlflow.artifacts.load_text(f"runs:/{trained.mlflow_run_id}/card/model_card.html")
        stage_dir = tmp_path / f"e{results.index(result)}" / model_card.ARTIFACT_DIR
        assert (stage_dir / model_card.HTML).read_text() == html
        assert (stage_dir / model_card.MARKDOWN).read_text() == mlflow.artifacts.load_text(
            f"runs:/{trained.mlflow_run_id}/card/model_card.md")
        assert f'<span id="model-version">{result.version}</span>' in html and result.decision.reason in html
        assert SHA in html and "/data/unit.csv" in html and "Ranking wines for a tasting panel." in html
        # residuals and feature importance; what drives predictions: mean |attribution|, beeswarm, dependence
        assert html.count("data:image/png;base64,") == 5
        description = client.get_model_version("unit-model", result.version).description
        assert description.startswith(f"**unit-model v{result.version}**") and result.decision.reason in description
    # The second version's card shows the champion it was weighed against, with its metrics.
    second = mlflow.artifacts.load_text(f"runs:/{runs[1].mlflow_run_id}/card/model_card.md")
    rmse = f"{results[0].metrics['rmse']:.4f}"
    assert "| metric | v2 (this version) | v1 (champion) |" in second
    assert f"| rmse (gate) | {results[1].metrics['rmse']:.4f} | {rmse} |" in second
    assert "Not promoted: not better" in second


def test_a_classifiers_card_shows_its_calibration_probability_metrics_and_reliability(
        mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    import mlflow

    trained = train(noisy_dataset(600), training_config("classification", "random_forest", mlflow_config, "sigmoid"),
                    "cal", tmp_path / "cal", dataset_source="/data/unit.csv")
    config = evaluation_config("classification", mlflow_config)
    config = EvaluationConfig(config.schema, PromotionConfig(metric="log_loss", min_improvement="1%"), config.mlflow)
    result = evaluate(noisy_dataset(300, seed=1), config, trained, tmp_path / "e")
    markdown = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.MARKDOWN).read_text()
    html = (tmp_path / "e" / model_card.ARTIFACT_DIR / model_card.HTML).read_text()
    calibration = "sigmoid (Platt scaling), 5-fold cross-fitted on the training split"
    assert f"- Calibration: {calibration}" in markdown and calibration in _text(html)
    assert "| n_estimators | 5 |" in markdown  # the forest's own hyperparameters, not the calibrator's
    for name, better in (("log_loss (gate)", "lower"), ("brier_score", "lower"), ("pr_auc", "higher"),
                         ("balanced_accuracy", "higher"), ("roc_auc", "higher")):
        value = result.metrics[name.removesuffix(" (gate)")]
        assert f"| {name} | {value:.4f} | - | {better} |" in markdown
    assert 'alt="Reliability: predicted probability vs observed frequency (test set)"' in html
    # confusion matrix, reliability, importance; the calibrated forest's mean |attribution|, beeswarm, dependence
    assert html.count("data:image/png;base64,") == 6
    reliability = mlflow.artifacts.download_artifacts(f"runs:/{trained.mlflow_run_id}/plots/reliability.png",
                                                      dst_path=str(tmp_path / "png"))
    assert Path(reliability).read_bytes().startswith(b"\x89PNG")


def test_the_reliability_plot_draws_each_class_or_the_positive_one() -> None:
    from include.ml.components import plots

    rng = np.random.default_rng(0)
    three = rng.dirichlet([1, 1, 1], 200)
    y = pd.Series(np.array(["a", "b", "c"])[[rng.choice(3, p=p) for p in three]])
    figure = plots.reliability(three, ["a", "b", "c"], y)
    curve = figure.axes[0]
    assert [line.get_label() for line in curve.get_lines()] == ["perfectly calibrated", "class a", "class b",
                                                                "class c"]
    binary = plots.reliability(np.column_stack([1 - three[:, 0], three[:, 0]]), ["n", "y"],
                               pd.Series(np.where(y == "a", "y", "n")))
    assert [line.get_label() for line in binary.axes[0].get_lines()] == ["perfectly calibrated", "class y"]
    # Each curve: the observed share of the class against the mean predicted probability, per tenth of [0, 1].
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y == "a", three[:, 0], n_bins=10)
    np.testing.assert_allclose(curve.get_lines()[1].get_xydata(), np.column_stack([predicted, observed]))


def test_the_card_says_how_each_dtype_and_role_reaches_the_model(facts: model_card.CardFacts) -> None:
    """Ids and ignored columns are no inputs, a datetime becomes its parts, each category its encoding; the rows
    dropped for want of a target are counted."""
    from dataclasses import replace

    from tests.support.frames import mixed_schema

    mixed = replace(facts, schema=mixed_schema("regression"), family="hist_gradient_boosting",
                    data=model_card.TrainingData("data/mixed.csv", SHA, 300, rows_without_target=12))
    card = model_card.build(mixed, FILLED)
    for line in ("| row_id | int | no |  | id | row key, not an input |",
                 "| when | datetime | no | 2020-01-01 to 2021-12-31 | feature | year, month, day, day of week, hour |",
                 "| grade | ordinal | no | low → mid → high | feature | its position in the order |",
                 "| plate | category | yes | any (an open set) | feature | target encoding (mean target per value) |",
                 "| kind | category | no | p, q | feature | native categorical splits |",
                 "| note | string | no |  | ignore | not an input |"):
        assert line in card.markdown, line
    assert "300 ingested, after dropping 12 without a target, 60 for training" in card.markdown
    assert "after dropping 12 without a target" in _text(card.html)
