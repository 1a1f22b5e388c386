"""A bundle is trusted for its signature and the server's own allow-list, never for what it says about itself.

Each hostile bundle carries a payload that writes a marker file when deserialized by a loader that believes the
bundle; the loader must refuse it before any byte of the model is deserialized, and the marker never appears.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from serving.model import ModelLoadError, load_bundle
from serving.trust import ALLOWED_SKOPS_TYPES
from tests.support.attacks import ATTACK_TYPE, CASES, pickle_payload, skops_payload, tampered
from tests.support.signing import trusted_keys

REFUSAL = {
    "pickle-format": "serialization format 'pickle' is not loaded",
    "extra-trusted-type": f"types outside the serving allow-list: ['{ATTACK_TYPE}']",
    "unsigned-manifest": "the signature does not match MANIFEST.sha256",
    "other-key": "which is not trusted here",
    "signature-of-another-manifest": "the signature does not match MANIFEST.sha256",
}


def test_the_payloads_run_code_under_a_loader_that_believes_the_bundle(tmp_path: Path) -> None:
    """The attacks are real: unpickling, or skops with the bundle's own trusted list, runs the payload."""
    import skops.io

    pickle.loads(pickle_payload(tmp_path / "pickled"))
    skops.io.loads(skops_payload(tmp_path / "skopsed"), trusted=["numpy.dtype", ATTACK_TYPE])
    assert (tmp_path / "pickled").exists() and (tmp_path / "skopsed").exists()


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_bundle_is_refused_before_anything_is_deserialized(case: str, bundles: Path,
                                                                     tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    bundle = tampered(bundles / "1", tmp_path / "store" / "9", case, marker, tmp_path / "attacker.key")
    with pytest.raises(ModelLoadError) as refused:
        load_bundle(bundle, trusted_keys())
    assert REFUSAL[case] in str(refused.value)
    assert not marker.exists()


def test_no_trusted_key_means_no_bundle_loads(bundles: Path) -> None:
    with pytest.raises(ModelLoadError, match="no trusted public key is configured"):
        load_bundle(bundles / "1", {})
    assert load_bundle(bundles / "1", trusted_keys()).version == "1"


def test_the_allow_list_is_the_families_needs() -> None:
    """Every type a model family may need is one the servers load (what trains can always be served)."""
    from include.ml.models import FAMILIES

    for name, family in FAMILIES.items():
        assert set(family.skops_trusted_types) <= ALLOWED_SKOPS_TYPES, name
