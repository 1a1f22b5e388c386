"""Issue 23: a signed pointer names a release (champion + candidate, mode, share); the server parses it strictly
and refuses anything else, and a pointer without a release keeps its exact bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serving import pointer as pointers
from serving import store as store_mod
from tests.support.pointers import signed_statement
from tests.support.signing import trusted_keys

SHA = "a" * 64
GOOD = {"version": "2", "bundle_sha256": SHA, "mode": "canary", "share": 0.1}


def parsed(**fields: Any) -> pointers.Pointer:
    return pointers.verify(signed_statement(**fields), trusted_keys())


def test_a_pointer_names_a_candidate_with_mode_and_share() -> None:
    found = parsed(candidate=pointers.Candidate("2", SHA, "canary", 0.1))
    assert found.candidate == pointers.Candidate("2", SHA, "canary", 0.1)
    assert found.describe()["candidate"] == GOOD
    shadow = parsed(candidate=pointers.Candidate("3", SHA, "shadow", 1))
    assert shadow.candidate is not None and shadow.candidate.share == 1.0 and isinstance(shadow.candidate.share,
                                                                                          float)


def test_a_pointer_without_a_release_keeps_its_bytes() -> None:
    plain = pointers.statement("toy", "1", SHA, 5, issued_at="2026-01-01T00:00:00.000Z")
    assert plain == pointers.statement("toy", "1", SHA, 5, issued_at="2026-01-01T00:00:00.000Z", candidate=None)
    assert b"candidate" not in plain
    assert json.loads(plain) == {"_type": pointers.TYPE, "model": "toy", "version": "1", "bundle_sha256": SHA,
                                 "sequence": 5, "issued_at": "2026-01-01T00:00:00.000Z", "rollback": False}
    assert parsed().candidate is None and parsed().describe()["candidate"] is None


def _raw(candidate: object) -> bytes:
    """A signed statement whose "candidate" is any JSON value (statement() only writes well-formed ones)."""
    from include.release.signing import LocalSigner
    from serving.signing import key_id
    from tests.support.signing import signing_config

    fields = {"_type": pointers.TYPE, "model": "toy", "version": "1", "bundle_sha256": SHA, "sequence": 7,
              "issued_at": "2026-01-01T00:00:00.000Z", "rollback": False, "candidate": candidate}
    payload = json.dumps(fields).encode()
    signer = LocalSigner(signing_config().private_key)
    return pointers.envelope(payload, signer.sign(payload), key_id(signer.public_key()))


def test_a_null_candidate_is_no_release() -> None:
    assert pointers.verify(_raw(None), trusted_keys()).candidate is None


@pytest.mark.parametrize(("candidate", "message"), [
    ("2", "malformed candidate"),
    ([GOOD], "malformed candidate"),
    ({**GOOD, "extra": 1}, "malformed candidate"),
    ({k: v for k, v in GOOD.items() if k != "share"}, "malformed candidate"),
    ({**GOOD, "version": 2}, "malformed candidate"),
    ({**GOOD, "bundle_sha256": "A" * 64}, "malformed candidate"),
    ({**GOOD, "bundle_sha256": "a" * 63}, "malformed candidate"),
    ({**GOOD, "mode": "mirror"}, 'mode "mirror" is not one of shadow, canary'),
    ({**GOOD, "mode": None}, "is not one of"),
    ({**GOOD, "share": 0}, "share 0 is not a number in"),
    ({**GOOD, "share": -0.1}, "is not a number in"),
    ({**GOOD, "share": 1.01}, "is not a number in"),
    ({**GOOD, "share": True}, "is not a number in"),
    ({**GOOD, "share": "0.5"}, "is not a number in"),
    ({**GOOD, "share": None}, "is not a number in"),
    ({**GOOD, "version": "../elsewhere"}, "the candidate names no version directory"),
    ({**GOOD, "version": ".staging"}, "the candidate names no version directory"),
    ({**GOOD, "version": "1"}, "the candidate is version 1, the champion itself"),
])
def test_a_malformed_candidate_is_refused(candidate: object, message: str) -> None:
    with pytest.raises(pointers.PointerError, match=message):
        pointers.verify(_raw(candidate), trusted_keys())
    assert pointers.peek(_raw(candidate)) is None  # not shown as a pointer either


def test_check_needs_the_candidate_directory_too(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    release = parsed(candidate=pointers.Candidate("2", SHA, "shadow", 0.5))
    with pytest.raises(pointers.PointerError, match="pointer names candidate version 2, which is not in this store"):
        pointers.check(release, tmp_path, "toy", None)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "2").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(pointers.PointerError, match="candidate 2, which is not a version directory"):
        pointers.check(release, tmp_path, "toy", None)
    (tmp_path / "2").unlink()
    (tmp_path / "2").mkdir()
    assert pointers.check(release, tmp_path, "toy", None) == tmp_path / "1"
    assert pointers.candidate_dir(release, tmp_path) == tmp_path / "2"
    assert pointers.candidate_dir(parsed(), tmp_path) is None


def test_pruning_keeps_the_candidate(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for version in ("1", "2", "3", "4", "5"):
        (store / version).mkdir(parents=True)
    store_mod.write_pointer(store, signed_statement(candidate=pointers.Candidate("2", SHA, "shadow", 1.0)))
    store_mod.write_pointer(store, signed_statement(version="3", candidate=pointers.Candidate("4", SHA, "canary",
                                                                                             0.5)),
                            store_mod.PREVIOUS)
    protected = pointers.named_versions(store)
    assert protected == {"1", "2", "3", "4"}
    assert store_mod.prune(store, keep=1, protected=protected) == []
    assert store_mod.versions(store) == ["1", "2", "3", "4", "5"]
