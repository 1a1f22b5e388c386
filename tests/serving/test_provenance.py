"""The bundle's provenance statement: verified at load (DSSE signature by a trusted key, subjects = the signed
manifest's files, the model bundle.json names), refused whole when altered, served at GET /provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serving import provenance, store
from serving.app import create_app
from serving.model import ModelLoadError, load_bundle
from tests.support.bundles import copy_store, remanifest
from tests.support.provenance import CASES, SNAPSHOT_SHA256, add_provenance, tampered
from tests.support.signing import public_key_file, sign, trusted_keys

REFUSAL = {
    "signed-by-another-key": "provenance.json: not signed by a trusted key",
    "subject-digest-changed": "in the statement differs from the bundle's",
    "payload-edited-signature-kept": "does not match the statement",
    "statement-of-another-version": "in the statement differs from the bundle's",
    "names-another-model": "it is about model 'toy' version '9' (run 'run-1'), the bundle holds 'toy' version '1'",
    "edited-after-the-manifest-was-signed": "checksum mismatch for provenance.json",
}


@pytest.fixture(scope="module")
def proven(bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's bundles "1" and "2", each with a statement signed as export signs it."""
    source = copy_store(bundles, tmp_path_factory.mktemp("proven") / "store")
    for version in ("1", "2"):
        add_provenance(source / version)
    return source


def test_a_signed_statement_about_the_bundle_loads_and_is_kept(proven: Path) -> None:
    model = load_bundle(proven / "1", trusted_keys())
    assert model.provenance == (proven / "1" / provenance.FILE).read_bytes()
    statement, _ = provenance.verify_envelope(model.provenance, trusted_keys())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == provenance.PREDICATE_TYPE
    assert statement["predicate"]["data"]["sha256"] == SNAPSHOT_SHA256
    # Every file of the bundle but the statement itself (the manifest covers it) is a subject, with its digest.
    listed = provenance.manifest_digests((proven / "1" / store.MANIFEST).read_bytes())
    assert provenance.FILE in listed
    assert provenance.subjects(statement) == {k: v for k, v in listed.items() if k != provenance.FILE}
    assert {"bundle.json", "model/MLmodel"} <= set(provenance.subjects(statement))


def test_the_signed_bytes_are_dsse_v1_pae() -> None:
    """The DSSE spec's own example (protocol.md): the statement is signed as any DSSE verifier expects."""
    assert provenance.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


@pytest.mark.parametrize("case", CASES)
def test_an_altered_statement_refuses_the_whole_bundle(case: str, proven: Path, tmp_path: Path) -> None:
    bundle = tampered(proven / "1", proven / "2", tmp_path / "store" / "1", case, tmp_path / "attacker.key")
    with pytest.raises(ModelLoadError) as refused:
        load_bundle(bundle, trusted_keys())
    assert REFUSAL[case] in str(refused.value)


def test_a_statement_of_another_payload_type_is_refused(proven: Path, tmp_path: Path) -> None:
    """The type is signed too (DSSE's PAE): relabelling the envelope breaks the signature check."""
    bundle = copy_store(proven, tmp_path / "store") / "1"
    envelope = json.loads((bundle / provenance.FILE).read_bytes())
    (bundle / provenance.FILE).write_text(json.dumps({**envelope, "payloadType": "application/json"}))
    remanifest(bundle)
    sign(bundle)
    with pytest.raises(ModelLoadError, match="payload type 'application/json' is not"):
        load_bundle(bundle, trusted_keys())


def test_get_provenance_serves_the_statement_as_loaded(proven: Path, tmp_path: Path) -> None:
    app = create_app({"model_store": copy_store(proven, tmp_path / "store", current="1"), "poll_seconds": 0,
                      "public_key": public_key_file()})
    try:
        response = app.test_client().get("/provenance")  # open like /model-card: no key needed
    finally:
        app.extensions["serving"].holder.stop()
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_data() == (proven / "1" / provenance.FILE).read_bytes()
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_bundle_without_a_statement_loads_and_answers_404_json(client: Any) -> None:
    response = client.get("/provenance")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "no_provenance"
    assert "toy version 1 has no provenance statement" in response.get_json()["error"]["message"]
