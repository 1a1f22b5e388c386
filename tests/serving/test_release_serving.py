"""Issue 23: one worker serving a release (no server process: the holder, and the app through Flask's test client).

The holder loads both bundles of a pointer or neither; shadow answers with the champion and scores the candidate
after the response; canary answers with the candidate for its share (sticky by X-Client-Key) and falls back to the
champion when the candidate fails; every pair is captured once with both answers; /version and /metrics show it."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from serving.app import shutdown
from serving.capture import closed_files, read_records
from serving.metrics import Metrics
from serving.model import ModelHolder
from serving.release import CANDIDATE, CHAMPION, Job, Scored, Scorer, in_share
from tests.support.bundles import GOOD_ROW, break_bundle, make_bundle
from tests.support.releases import candidate, make_narrow_bundle, point_release
from tests.support.signing import trusted_keys


@pytest.fixture(scope="module")
def extra_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: "n3" (regression, a contract taking x1 in [-1, 1] only) and "c2" (a second classifier of the
    session's "c1" model)."""
    source = tmp_path_factory.mktemp("release-bundles")
    make_narrow_bundle(source, "n3", offset=50.0)
    make_bundle(source, "c2", task="classification", name="toy-classifier", n_estimators=2)
    return source


@pytest.fixture
def release_store(store: Path, extra_bundles: Path) -> Path:
    for bundle in extra_bundles.iterdir():
        shutil.copytree(bundle, store / bundle.name)
    return store


def samples(app: Flask) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The app's /metrics as {(sample name, sorted labels): value}."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def calls(found: dict[Any, float], role: str, outcome: str) -> float:
    return found.get(("serving_release_requests_total", (("outcome", outcome), ("role", role))), 0.0)


def captured(directory: Path) -> list[dict[str, Any]]:
    return sorted((r for path in closed_files(directory) for r in read_records(path)),
                  key=lambda r: (r["request_id"], r["row"]))


# --- the holder ------------------------------------------------------------------------------------------------

def test_the_holder_loads_both_models_and_reuses_them(release_store: Path) -> None:
    holder = ModelHolder(release_store, trusted_keys())
    assert holder.refresh() and holder.current.version == "1" and holder.release is None
    point_release(release_store, "1", candidate(release_store, "2", "shadow", 0.25))
    assert holder.refresh()
    champion, release = holder.current, holder.release
    assert champion.version == "1" and release is not None
    assert (release.candidate.version, release.mode, release.share) == ("2", "shadow", 0.25)
    assert holder.served.champion is champion and holder.served.release is release  # one reference, both
    point_release(release_store, "1", candidate(release_store, "2", "canary", 0.5))
    assert holder.refresh()  # the same models, another mode: nothing loaded again
    assert holder.current is champion and holder.release.candidate is release.candidate
    assert holder.release.describe() == {"version": "2", "mode": "canary", "share": 0.5}
    point_release(release_store, "2", None)  # promote: the candidate becomes the champion as it is
    assert holder.refresh()
    assert holder.current is release.candidate and holder.release is None


def test_a_candidate_that_fails_to_load_refuses_the_whole_pointer(release_store: Path) -> None:
    holder = ModelHolder(release_store, trusted_keys())
    holder.refresh()
    served = holder.served
    break_bundle(release_store / "2")  # signed and consistent, but the model file is garbage
    point_release(release_store, "1", candidate(release_store, "2", "canary", 0.1))
    assert not holder.refresh()
    assert holder.served is served and holder.release is None  # still the champion alone
    assert holder.refused is not None and holder.refused["version"] == "1" and holder.refused["candidate"] == "2"
    assert "bundle 2" in holder.refused["error"]


# --- shadow ----------------------------------------------------------------------------------------------------

def test_shadow_answers_with_the_champion_and_captures_every_pair(make_app: Callable[..., Flask],
                                                                  release_store: Path, tmp_path: Path) -> None:
    point_release(release_store, "1", candidate(release_store, "2", "shadow", 1.0))
    # capture samples no request at all: pairs are captured anyway (the release gate needs every one)
    app = make_app(capture_dir=tmp_path / "capture", capture_sample=0.0)
    client = app.test_client()
    assert client.get("/version").json["candidate"] == {"version": "2", "mode": "shadow", "share": 1.0}
    answers = [client.post("/predict", json=[GOOD_ROW, {**GOOD_ROW, "x1": -2.0}], headers={"X-Request-ID": f"r{i}"})
               for i in range(10)]
    assert {(a.status_code, a.headers["X-Model-Version"], a.json["model"]["version"]) for a in answers} == \
        {(200, "1", "1")}
    shutdown(app)  # drains the scorer, then the capture writer
    rows = captured(tmp_path / "capture")
    assert len(rows) == 20 and {r["served_by"] for r in rows} == {CHAMPION}
    for row, answer in zip(rows, [a for a in answers for _ in (0, 1)]):
        assert row["model_version"] == row["champion"]["version"] == "1" and row["candidate"]["version"] == "2"
        assert row["prediction"] == row["champion"]["prediction"] == answer.json["predictions"][row["row"]]
        assert row["candidate"]["prediction"] == pytest.approx(row["prediction"] + 100, abs=15)  # offset 100
        assert row["champion"]["probabilities"] is None and row["candidate"]["probabilities"] is None
    found = samples(app)
    assert calls(found, CHAMPION, "ok") == calls(found, CANDIDATE, "ok") == 10
    assert found[("serving_release_seconds_count", (("role", CANDIDATE),))] == 10
    assert found[("serving_release_agreement_count", ())] == 20  # one per row
    assert found[("serving_release_agreement_bucket", (("le", "0.1"),))] == 0  # 100 apart: no row agrees


def test_shadow_scores_only_its_share(make_app: Callable[..., Flask], release_store: Path) -> None:
    point_release(release_store, "1", candidate(release_store, "2", "shadow", 0.3))
    app = make_app()
    client = app.test_client()
    ids = [f"req-{i}" for i in range(200)]
    for rid in ids:
        assert client.post("/predict", json=[GOOD_ROW], headers={"X-Request-ID": rid}).headers["X-Model-Version"] \
            == "1"
    shutdown(app)
    found = samples(app)
    expected = sum(in_share(rid, 0.3) for rid in ids)
    assert 30 < expected < 90 and calls(found, CANDIDATE, "ok") == expected
    assert calls(found, CHAMPION, "ok") == 200  # during a release every champion call counts


# --- canary ----------------------------------------------------------------------------------------------------

def test_canary_answers_with_the_candidate_and_sticky_keys_stay(make_app: Callable[..., Flask],
                                                                release_store: Path, tmp_path: Path) -> None:
    point_release(release_store, "1", candidate(release_store, "2", "canary", 0.5))
    app = make_app(capture_dir=tmp_path / "capture")
    client = app.test_client()
    seen: dict[str, set[str]] = {}
    for i in range(120):
        key = f"client-{i % 12}"
        answer = client.post("/predict", json=[GOOD_ROW], headers={"X-Client-Key": key})
        assert answer.status_code == 200 and answer.headers["X-Model-Version"] == answer.json["model"]["version"]
        seen.setdefault(key, set()).add(answer.headers["X-Model-Version"])
    assert all(len(versions) == 1 for versions in seen.values())  # sticky: one model per client
    assert {key for key, versions in seen.items() if versions == {"2"}} == {k for k in seen if in_share(k, 0.5)}
    assert {"1"} in seen.values() and {"2"} in seen.values()
    shutdown(app)
    rows = captured(tmp_path / "capture")
    by_candidate = [r for r in rows if r["served_by"] == CANDIDATE]
    assert len(by_candidate) == 10 * sum(in_share(k, 0.5) for k in seen)
    for row in by_candidate:  # the candidate answered; the champion scored the same row afterwards
        assert row["model_version"] == row["candidate"]["version"] == "2" and row["champion"]["version"] == "1"
        assert row["prediction"] == row["candidate"]["prediction"] != row["champion"]["prediction"]
    assert all("candidate" not in r for r in rows if r["served_by"] == CHAMPION)  # outside the share: one model


def test_rows_the_candidate_contract_refuses_are_answered_by_the_champion(make_app: Callable[..., Flask],
                                                                         release_store: Path) -> None:
    point_release(release_store, "1", candidate(release_store, "n3", "canary", 1.0))
    app = make_app()
    client = app.test_client()
    inside = client.post("/predict", json=[{**GOOD_ROW, "x1": 0.5}])
    outside = client.post("/predict", json=[{**GOOD_ROW, "x1": 5.0}])  # out of n3's range, inside 1's
    wrong = client.post("/predict", json=[{**GOOD_ROW, "x1": 50.0}])  # out of both: the client's mistake
    assert (inside.status_code, inside.headers["X-Model-Version"]) == (200, "n3")
    assert (outside.status_code, outside.headers["X-Model-Version"]) == (200, "1")
    assert wrong.status_code == 422, wrong.json
    shutdown(app)
    found = samples(app)
    assert calls(found, CANDIDATE, "ok") == 1 and calls(found, CANDIDATE, "error") == 1
    assert found[("serving_release_errors_total", (("reason", "input"), ("role", CANDIDATE)))] == 1
    assert calls(found, CHAMPION, "ok") == 2  # "outside" on the request path, "inside" off it
    assert calls(found, CHAMPION, "error") == 0


def test_a_candidate_that_raises_never_fails_a_request(make_app: Callable[..., Flask], release_store: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_release(release_store, "1", candidate(release_store, "2", "canary", 1.0))
    app = make_app(capture_dir=tmp_path / "capture")
    loaded = app.extensions["serving"].holder.release.candidate

    def broken(columns: dict[str, np.ndarray], numeric: np.ndarray | None = None) -> Any:
        raise RuntimeError("the candidate's runtime failed")  # a fault injected into the real loaded model

    monkeypatch.setattr(loaded, "predict", broken)
    answers = [app.test_client().post("/predict", json=[GOOD_ROW], headers={"X-Request-ID": f"r{i}"})
               for i in range(5)]
    assert {(a.status_code, a.headers["X-Model-Version"]) for a in answers} == {(200, "1")}
    shutdown(app)
    found = samples(app)
    assert calls(found, CANDIDATE, "error") == 5 and calls(found, CANDIDATE, "ok") == 0
    assert found[("serving_release_errors_total", (("reason", "exception"), ("role", CANDIDATE)))] == 5
    assert calls(found, CHAMPION, "ok") == 5
    rows = captured(tmp_path / "capture")
    assert [(r["served_by"], r["model_version"], "candidate" in r) for r in rows] == [(CHAMPION, "1", False)] * 5


def test_classification_pairs_count_agreement(make_app: Callable[..., Flask], release_store: Path,
                                              tmp_path: Path) -> None:
    point_release(release_store, "c1", candidate(release_store, "c2", "shadow", 1.0), model="toy-classifier")
    app = make_app(capture_dir=tmp_path / "capture")
    rows = [{**GOOD_ROW, "x1": float(x), "x2": float(-x)} for x in np.linspace(-5, 5, 30)]
    answer = app.test_client().post("/predict", json=rows)
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "c1"
    shutdown(app)
    found = samples(app)
    agree = found.get(("serving_release_pairs_total", (("agree", "true"),)), 0)
    disagree = found.get(("serving_release_pairs_total", (("agree", "false"),)), 0)
    records = captured(tmp_path / "capture")
    assert agree + disagree == 30 == len(records)
    assert agree == sum(r["champion"]["prediction"] == r["candidate"]["prediction"] for r in records)
    assert all(set(r["candidate"]["probabilities"]) == {"a", "b", "c"} for r in records)


def test_version_shows_no_candidate_without_a_release(client: Any) -> None:
    assert client.get("/version").json["candidate"] is None


def test_a_full_scorer_queue_drops_and_counts(release_store: Path) -> None:
    """The scorer thread is held inside a model call; beyond `limit` waiting jobs, submit drops at once."""
    holder = ModelHolder(release_store, trusted_keys())
    holder.refresh()
    model = holder.current
    metrics = Metrics()
    entered, go = threading.Event(), threading.Event()

    class Held:  # the champion, but its call waits until the test lets it go
        contract, version = model.contract, "held"

        def predict(self, columns: dict[str, np.ndarray], numeric: np.ndarray | None = None) -> Any:
            entered.set()
            go.wait(10)
            return model.predict(columns, numeric)

    def validate(records: Any, contract: Any, from_text: bool) -> Any:
        raise AssertionError("the same contract: the answered rows are scored as they are")

    from serving.inputs import validate as check

    batch = check([GOOD_ROW], model.contract, max_rows=10)
    answered = Scored(model, batch, model.predict(batch.columns, batch.numeric))
    scorer = Scorer(validate, metrics.release, None, limit=2)
    job = Job("r", [GOOD_ROW], False, answered, CANDIDATE, Held())  # type: ignore[arg-type]
    assert scorer.submit(job) and entered.wait(10)  # taken by the thread, held
    assert scorer.submit(job) and scorer.submit(job)  # two wait
    assert not scorer.submit(job) and not scorer.submit(job)  # full: dropped, not waited for
    assert metrics.release.dropped._value.get() == 2
    go.set()
    scorer.close()
    assert metrics.release._ok[CHAMPION]._value.get() == 3  # the three queued were scored before the close
    assert not scorer.submit(job) and metrics.release.dropped._value.get() == 3  # closed: dropped
    assert metrics.release._ok[CANDIDATE]._value.get() == 6  # every answer counts, its pair dropped or not
