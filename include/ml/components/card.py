"""The model card of a registered version: what the model is, what it learnt from, how it scored against the
champion and why the gate decided as it did, and what it is for (config.yaml's `card:`).

Rendered from Jinja2 templates (include/ml/templates/) in Markdown and as one self-contained HTML page, its plots
embedded as data: URIs; the registry's description is the card's short summary. Every value is escaped
(autoescape), so text from the config or the data never becomes markup.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from include.ml import artifacts
from include.ml.components.training import CALIBRATION_FOLDS
from include.ml.config_file import CardConfig
from include.ml.params_file import METRICS
from include.ml.preprocessing import encodings
from include.ml.schema_file import ColumnSpec, SchemaConfig
from serving.features import PARTS

ARTIFACT_DIR = "card"  # in the training run's MLflow artifacts, and in the evaluate stage's directory
MARKDOWN = "model_card.md"
HTML = "model_card.html"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
UNFILLED = "Not filled in: set card.{} in config.yaml."
LABELS = {"intended_use": "Intended use", "limitations": "Limitations", "owners": "Owners and contact",
          "license": "License"}  # the keys of CardConfig
_FITTED = f"{CALIBRATION_FOLDS}-fold cross-fitted on the training split (scikit-learn CalibratedClassifierCV)"
METHODS = {  # the explainer's method -> what the card says
    "tree_shap": "TreeSHAP (the shap package's TreeExplainer on the fitted trees, exact for the model)",
    "linear": "the exact linear attribution: each coefficient times the column's standardised value, so a "
              "column at its training mean contributes 0",
}
CALIBRATION = {  # model.calibration -> what the card says
    "none": "none (the estimator's own probabilities)",
    "sigmoid": f"sigmoid (Platt scaling), {_FITTED}",
    "isotonic": f"isotonic regression, {_FITTED}",
}


@dataclass(frozen=True)
class TrainingData:
    """The snapshot the model was trained on (the ingest stage's record of it)."""

    source: str
    sha256: str
    rows: int
    rows_without_target: int = 0  # dropped at ingest (schema.yaml target.missing: drop)


@dataclass(frozen=True)
class CardFacts:
    """What evaluate knows about a version once the gate has decided."""

    model_name: str
    version: str
    run_url: str
    family: str
    estimator: str
    hyperparameters: Mapping[str, Any]
    schema: SchemaConfig
    data: TrainingData | None  # None: the caller did not say (the card shows it as not recorded)
    train_rows: int
    test_rows: int
    metrics: Mapping[str, float]
    champion_version: str | None  # the champion the gate weighed this version against; None: there was none
    champion_metrics: Mapping[str, float]
    gate_metric: str
    promoted: bool
    reason: str
    importance: Mapping[str, float] = field(default_factory=dict)  # feature -> drop in score when shuffled
    plots: Mapping[str, bytes] = field(default_factory=dict)  # title -> PNG
    calibration: str = "none"  # params.yaml model.calibration
    # What drives predictions (include/ml/components/explanations.py Summary); None: not explained
    explained: Any = None


@dataclass(frozen=True)
class ModelCard:
    markdown: str
    html: str
    description: str  # the short form: the registered version's description


@functools.cache
def _environment() -> Any:
    import jinja2

    # Autoescape in every template, Markdown included: an escaped "<" shows as "<" there too, never as a tag.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def build(facts: CardFacts, config: CardConfig) -> ModelCard:
    """Render the card of one version; a `card:` field left out shows as a placeholder saying so."""
    context = {
        "f": facts, "labels": LABELS, "card_path": f"{ARTIFACT_DIR}/{HTML}", "values": _values, "number": _number,
        "roles": {c.name: "target" if c.name == facts.schema.target else c.role for c in facts.schema.columns},
        "inputs": model_inputs(facts.schema, facts.family),
        "better": {name: "higher" if up else "lower" for name, up in METRICS[facts.schema.task].items()},
        "calibration": CALIBRATION.get(facts.calibration, facts.calibration),
        "usage": {key: getattr(config, key) or UNFILLED.format(key) for key in LABELS},
        "unfilled": {key for key in LABELS if not getattr(config, key)},
        "hyperparameters": {k: _shown(v) for k, v in sorted(facts.hyperparameters.items())},
        "importance": sorted(facts.importance.items(), key=lambda item: -item[1]),
        "metric_names": list(dict.fromkeys([*facts.metrics, *facts.champion_metrics])),
        "plots": list(facts.plots),
        "images": {title: base64.b64encode(png).decode() for title, png in facts.plots.items()},
        "explained": facts.explained, "methods": METHODS,
        "leakage": facts.explained.warnings if facts.explained is not None else (),
        "attribution_images": {title: base64.b64encode(png).decode()
                               for title, png in (facts.explained.plots if facts.explained else {}).items()},
    }
    env = _environment()
    return ModelCard(env.get_template("model_card.md.j2").render(context),
                     env.get_template("model_card.html.j2").render(context),
                     env.get_template("model_card_summary.md.j2").render(context).strip())


def write(card: ModelCard, directory: Path) -> None:
    """The Markdown and HTML card into `directory`, each file atomically."""
    artifacts.write_bytes(directory / MARKDOWN, card.markdown.encode())
    artifacts.write_bytes(directory / HTML, card.html.encode())


def model_inputs(schema: SchemaConfig, family: str) -> dict[str, str]:
    """How each column reaches the model (include/ml/preprocessing.py), in words: its encoding, the parts a datetime
    becomes; or why it does not (the target, a row key, an ignored column)."""
    treatment = encodings(schema, family)
    words = {"numeric": "as a number", "ordinal": "its position in the order", "onehot": "one-hot columns",
             "target": "target encoding (mean target per value)", "native": "native categorical splits"}
    shown = {}
    for column in schema.columns:
        if column.name == schema.target:
            shown[column.name] = "predicted"
        elif column.role != "feature":
            shown[column.name] = {"id": "row key, not an input", "ignore": "not an input"}[column.role]
        elif treatment[column.name] == "datetime":
            parts = [p.replace("dayofweek", "day of week") for p in PARTS]
            cyclical = "; with sine and cosine of month, day of week, hour" if column.cyclical else ""
            shown[column.name] = f"{', '.join(parts)}{cyclical}"
        else:
            shown[column.name] = words[treatment[column.name]]
    return shown


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _values(column: ColumnSpec) -> str:
    """What a column may hold, as schema.yaml says."""
    if column.values is not None:  # a category's allowed values, an ordinal's categories in order
        return (" → " if column.dtype == "ordinal" else ", ").join(map(str, column.values))
    if column.dtype == "category":
        return "any (an open set)"
    if column.min is not None and column.max is not None:
        return f"{column.min} to {column.max}"
    if column.min is not None:
        return f"at least {column.min}"
    return "" if column.max is None else f"at most {column.max}"
