"""The model card in the bundle and at GET /model-card: exported from the version's run, covered by the signed
manifest (an edited card refuses the bundle), served as HTML under a script-free Content-Security-Policy; a bundle
without one (exported before cards) still loads and the route answers 404 with a JSON error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from include.release.export import export_bundle
from include.release.signing import LocalSigner
from serving import store as store_mod
from serving.model import ModelLoadError, load_bundle
from tests.support.bundles import add_card, register_toy_model
from tests.support.pointers import point
from tests.support.signing import signing_config, trusted_keys

CARD = "<!doctype html><html><head><title>Model card</title></head><body><h1>toy v1</h1></body></html>\n"


def test_export_ships_the_runs_card_in_the_signed_bundle(tmp_path: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("cards", artifact_location=(tmp_path / "art").as_uri())
    version = register_toy_model("carded", experiment)
    signer = LocalSigner(signing_config().private_key)
    # Exported before its run had a card (as a version evaluated before cards existed): no card, and it loads.
    older = export_bundle("carded", version, tmp_path / "older", signer, trusted_keys())
    assert not (older / store_mod.CARD_HTML).exists()
    with mlflow.start_run(run_id=mlflow.MlflowClient().get_model_version("carded", version).run_id):
        mlflow.log_text(CARD, "card/model_card.html")  # where evaluate logs it
        mlflow.log_text("# toy v1\n", "card/model_card.md")

    bundle = export_bundle("carded", version, tmp_path / "store", signer, trusted_keys())
    assert (bundle / store_mod.CARD_HTML).read_text() == CARD
    assert (bundle / store_mod.CARD_MARKDOWN).read_text() == "# toy v1\n"
    assert {(bundle / name).stat().st_mode & 0o777 for name in (store_mod.CARD_HTML, store_mod.CARD_MARKDOWN)} \
        == {0o644}  # readable by a server running as another user
    listed = {line.partition("  ")[2] for line in (bundle / store_mod.MANIFEST).read_text().splitlines()}
    assert {store_mod.CARD_HTML, store_mod.CARD_MARKDOWN} <= listed  # signed with the model
    assert not list(bundle.glob(".*"))  # no download leftovers
    assert load_bundle(bundle, trusted_keys()).card_html == CARD
    assert load_bundle(older, trusted_keys()).card_html is None


@pytest.mark.parametrize("tamper, error", [
    ("edit", "checksum mismatch for model_card.html"),
    ("remove", r"missing \['model_card.html'\]"),
    ("add", r"unlisted \['model_card.html'\]"),
])
def test_a_tampered_card_refuses_the_bundle(store: Path, tamper: str, error: str) -> None:
    bundle = store / "1"
    if tamper == "add":  # slipped into a bundle exported without one
        (bundle / store_mod.CARD_HTML).write_text(CARD)
    else:
        add_card(bundle, CARD)
        assert load_bundle(bundle, trusted_keys()).card_html == CARD
        card = bundle / store_mod.CARD_HTML
        if tamper == "edit":
            card.write_text(CARD.replace("<h1>", "<script>fetch('//evil.example')</script><h1>"))
        else:
            card.unlink()
    with pytest.raises(ModelLoadError, match=error):
        load_bundle(bundle, trusted_keys())


def test_model_card_is_served_as_html_without_script(store: Path, make_app: Any) -> None:
    add_card(store / "1", CARD)
    point(store, "1")  # a new manifest: the pointer names its sha256
    client = make_app(api_key="card-test-key-0123456789").test_client()
    response = client.get("/model-card")  # open like /version and the form page: no key needed
    assert response.status_code == 200 and response.get_data(as_text=True) == CARD
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    policy = dict((part.strip().split(" ", 1) + [""])[:2] for part in response.headers["Content-Security-Policy"]
                  .split(";"))
    assert policy["sandbox"] == ""  # a unique origin with no script, whatever the policy's other parts say
    assert policy["default-src"] == "'none'" and "script-src" not in policy  # so no script runs, inline or not
    assert policy["img-src"] == "data:" and policy["frame-ancestors"] == "'none'"
    assert 'href="/model-card"' in client.get("/").get_data(as_text=True)  # the form page links to it


def test_a_bundle_without_a_card_answers_404_json(client: Any) -> None:
    response = client.get("/model-card")
    assert response.status_code == 404 and response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == "no_model_card" and "toy version 1 has no model card" in error["message"]
    assert 'href="/model-card"' not in client.get("/").get_data(as_text=True)


def test_no_model_yet_answers_503(store: Path, make_app: Any) -> None:
    (store / store_mod.CURRENT).unlink()
    response = make_app().test_client().get("/model-card")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "model_not_ready"
