"""The live evidence of a progressive release: one JSON record the ml_release tasks add to, and the documents made of
it for the candidate's model card (live_evidence.md, .html, .json).

The record lives in the release's stage dir (<artifacts_root>/<run id>/release/evidence.json, as every pipeline
stage keeps its outputs) so that each task, a bake that raised its alarm included, leaves its decision for the
next: the abort task reads why it aborts from it. The documents go to the candidate's training run beside its model
card (card/live_evidence.*) and to the release's own MLflow run; the signed bundle's card is not touched (export
copies only card/model_card.md and .html, so a re-export gives the same bytes).
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from include.ml import artifacts

EVIDENCE = "evidence.json"
DOCUMENTS = ("live_evidence.md", "live_evidence.html", "live_evidence.json")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_record(path: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """A new record for a release (or the one a retried `begin` already wrote for the same version)."""
    if path.is_file():
        record = read(path)
        if record.get("version") == facts.get("version") and record.get("outcome") is None:
            return record
    record = {**facts, "steps": [], "outcome": None, "reason": None, "ended_at": None}
    artifacts.write_json(path, record)
    return record


def read(path: Path) -> dict[str, Any]:
    return artifacts.read_json(path)


def add_step(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Record one step's outcome (a retried step replaces its earlier entry)."""
    record = read(path)
    record["steps"] = [s for s in record["steps"] if s["step"] != entry["step"]] + [entry]
    artifacts.write_json(path, record)
    return record


def close(path: Path, outcome: str, reason: str) -> dict[str, Any]:
    record = {**read(path), "outcome": outcome, "reason": reason, "ended_at": now()}
    artifacts.write_json(path, record)
    return record


def last_alarm(record: dict[str, Any]) -> str | None:
    """Why the release must stop: the reason of its last step that did not pass."""
    failed = [s for s in record.get("steps", []) if s.get("outcome") != "passed"]
    return f"{failed[-1]['step']}: {failed[-1]['reason']}" if failed else None


def write_documents(record: dict[str, Any], directory: Path) -> list[Path]:
    """live_evidence.md, .html and .json of `record` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = (markdown(record), page(record), json.dumps(record, indent=2, sort_keys=True) + "\n")
    paths = []
    for name, text in zip(DOCUMENTS, texts):
        (directory / name).write_text(text, encoding="utf-8")
        paths.append(directory / name)
    return paths


def _headline(record: dict[str, Any]) -> str:
    outcome = record.get("outcome") or "in progress"
    reason = f": {record['reason']}" if record.get("reason") else ""
    return f"{outcome}{reason}"


def _rows(record: dict[str, Any]) -> list[list[str]]:
    rows = []
    for step in record.get("steps", []):
        decision = step.get("decision") or {}
        rows.append([step["step"], step["mode"], f"{100 * step['share']:g} %", f"{step.get('seconds', 0):.0f} s",
                     str(step.get("polls", 0)), step["outcome"], str(decision.get("quality", "-")),
                     step.get("reason") or decision.get("summary") or ""])
    return rows


HEADERS = ["step", "mode", "share", "baked", "polls", "outcome", "quality", "decision"]


def _figures(step: dict[str, Any]) -> list[tuple[str, str]]:
    figures = (step.get("decision") or {}).get("figures") or {}
    return [(key, json.dumps(value, sort_keys=True)) for key, value in sorted(_flat(figures).items())]


def _flat(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def numeric_figures(figures: dict[str, Any]) -> dict[str, float]:
    """The figures that are numbers (booleans left out), flattened with dots: what MLflow takes as metrics."""
    return {key: float(value) for key, value in _flat(figures).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value}


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Live evidence: {record['model_name']} v{record['version']}", "",
             f"**Outcome: {_headline(record)}**", "",
             f"Released against champion v{record['champion']} from {record['started_at']} to "
             f"{record.get('ended_at') or '-'}; MLflow run: {record.get('mlflow_run_url', '-')}.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _rows(record)]
    for step in record.get("steps", []):
        figures = _figures(step)
        if figures:
            lines += ["", f"## {step['step']}: figures at its last look", ""]
            lines += [f"- `{key}`: {value}" for key, value in figures]
    return "\n".join(lines) + "\n"


def page(record: dict[str, Any]) -> str:
    """The same as one self-contained HTML page; every value escaped."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in _rows(record))
    sections = []
    for step in record.get("steps", []):
        items = "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in _figures(step))
        if items:
            sections.append(f"<h2>{e(step['step'])}: figures at its last look</h2><ul>{items}</ul>")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Live evidence: {e(record['model_name'])} "
            f"v{e(str(record['version']))}</title></head><body>"
            f"<h1>Live evidence: {e(record['model_name'])} v{e(str(record['version']))}</h1>"
            f"<p><strong>Outcome: {e(_headline(record))}</strong></p>"
            f"<p>Released against champion v{e(str(record['champion']))} from {e(record['started_at'])} to "
            f"{e(record.get('ended_at') or '-')}; MLflow run: {e(record.get('mlflow_run_url', '-'))}.</p>"
            f"<table><tr>{head}</tr>{body}</table>{''.join(sections)}</body></html>\n")
