"""The model store: checksummed bundles, atomic pointers, fetching a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving import pointer
from serving import store as store_mod
from serving.model import ModelLoadError, load_bundle
from tests.support.bundles import remanifest
from tests.support.pointers import point, pointer_for
from tests.support.signing import sign, trusted_keys


def test_manifest_catches_unlisted_missing_and_changed_files(store: Path) -> None:
    bundle = store / "1"
    store_mod.verify_manifest(bundle)
    (bundle / "extra.txt").write_text("x")
    with pytest.raises(store_mod.BundleError, match="unlisted"):
        store_mod.verify_manifest(bundle)
    (bundle / "extra.txt").unlink()
    (bundle / "model" / "MLmodel").write_text("changed")
    with pytest.raises(store_mod.BundleError, match="checksum mismatch for model/MLmodel"):
        store_mod.verify_manifest(bundle)
    (bundle / "bundle.json").unlink()
    with pytest.raises(store_mod.BundleError, match="missing"):
        store_mod.verify_manifest(bundle)


def test_load_bundle_refuses_a_model_without_input_description(store: Path) -> None:
    mlmodel = store / "1" / "model" / "MLmodel"
    text = mlmodel.read_text()
    cut = text.index("metadata:")
    mlmodel.write_text(text[:cut])  # no metadata, no signature after it
    remanifest(store / "1")
    sign(store / "1")
    with pytest.raises(ModelLoadError, match="neither metadata.feature_contract nor a signature"):
        load_bundle(store / "1", trusted_keys())


def test_install_is_atomic_and_idempotent(store: Path, tmp_path: Path) -> None:
    staged = store_mod.staging_dir(store)
    (staged / "bundle.json").write_text("{}")
    store_mod.write_manifest(staged, "toy", "7")
    target = store_mod.install(staged, store, "7")
    assert (target / "bundle.json").is_file() and not staged.exists()
    again = store_mod.staging_dir(store)
    (again / "bundle.json").write_text('{"different": true}')
    store_mod.write_manifest(again, "toy", "7")
    assert store_mod.install(again, store, "7") == target
    assert json.loads((target / "bundle.json").read_text()) == {}  # an installed version is never overwritten
    assert "7" in store_mod.versions(store) and not any(p.name.startswith(".staging") for p in store.iterdir())


def test_fetch_keeps_the_same_bundle_and_refuses_a_reused_version_name(store: Path, tmp_path: Path) -> None:
    import shutil

    from tests.support.bundles import make_bundle

    same = tmp_path / "same"
    shutil.copytree(store / "1", same / "1")
    assert store_mod.fetch(str(same), "1", store) == store / "1"
    other = tmp_path / "other"
    make_bundle(other, "1", offset=50.0)  # e.g. version 1 of a registry that was reset
    with pytest.raises(store_mod.BundleError, match="holds a different bundle"):
        store_mod.fetch(str(other), "1", store)
    with pytest.raises(store_mod.BundleError, match="no bundle at"):
        store_mod.fetch(str(other), "9", store)
    assert not any(p.name.startswith(".staging") for p in store.iterdir())  # nothing half-written left behind


def test_prune_keeps_the_newest_the_current_and_the_previous(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for version in ("1", "2", "3", "4", "5", "6"):
        (store / version).mkdir(parents=True)
    sha = "0" * 64
    point(store, "2", model="toy", bundle_sha256=sha)  # an operator rolled far back
    store_mod.write_pointer(store, pointer_for(store, "1", model="toy", bundle_sha256=sha).envelope,
                            store_mod.PREVIOUS)
    protected = pointer.named_versions(store)
    assert protected == {"1", "2"}
    assert store_mod.prune(store, keep=2, protected=protected) == ["3", "4"]
    assert store_mod.versions(store) == ["1", "2", "5", "6"]
    assert store_mod.prune(store, keep=2, protected=protected) == []  # nothing more to do
    assert store_mod.prune(store, keep=0, protected=protected) == []  # 0: keep everything
    assert not any(p.name.endswith(".pruned") for p in store.iterdir())


def test_one_store_command_at_a_time(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with store_mod.locked(store):
        with pytest.raises(store_mod.BundleError, match="locked by another store command"):
            with store_mod.locked(store, timeout=0.3):
                pass
    with store_mod.locked(store, timeout=0.3):  # released with the block
        pass
