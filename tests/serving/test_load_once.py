"""Issue 22, finding 3: the loader builds the model and the card from the very bytes it hashed.

The attack: swap model/model.skops or model_card.html on disk between the loader's hash and its read. Here a
thread swaps them in a tight loop (signed bytes <-> another model's and a hostile card) while the bundle loads
again and again; every model that loads is the signed one with the signed card (real gunicorn workers:
test_load_once_server.py). And a symlink (or anything but a regular file or directory) anywhere in a bundle
refuses it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from serving import store as store_mod
from serving.inputs import validate
from serving.model import ModelLoadError, load_bundle
from tests.support.bundles import GOOD_ROW
from tests.support.race import SIGNED_CARD, Swapper, race_store
from tests.support.signing import trusted_keys


def test_a_bundle_loaded_while_its_files_are_swapped_is_the_signed_one_or_refused(bundles: Path,
                                                                                   tmp_path: Path) -> None:
    store, hostile = race_store(bundles, tmp_path)
    loaded, refused = [], []
    with Swapper(hostile) as swapper:
        for _ in range(200):  # until both outcomes were seen 5 times (each is likely per load)
            try:
                model = load_bundle(store / "2", trusted_keys())
            except ModelLoadError as exc:
                assert "checksum mismatch" in str(exc), exc
                refused.append(str(exc))
                continue
            batch = validate([GOOD_ROW], model.contract, max_rows=1)
            loaded.append((model.predict(batch.columns, batch.numeric).values[0], model.card_html))
            if len(loaded) >= 5 and len(refused) >= 5:
                break
    assert swapper.swaps > 10
    assert refused, "the swapper never hit a load: the test proved nothing"
    assert loaded, "no load ever saw the signed files: the test proved nothing"
    # version 2 predicts about 100 for GOOD_ROW, its hostile twin about -100; the card is the signed one
    assert all(prediction > 50 and card == SIGNED_CARD for prediction, card in loaded), loaded


@pytest.mark.parametrize("kind", ["file", "model-dir", "bundle-dir", "fifo"])
def test_a_symlink_or_special_file_anywhere_in_a_bundle_refuses_it(bundles: Path, tmp_path: Path, kind: str) -> None:
    store = tmp_path / "store"
    bundle = shutil.copytree(bundles / "1", store / "1")
    outside = shutil.copytree(bundles / "1", tmp_path / "outside" / "1")  # identical bytes: hashes would match
    if kind == "file":
        (bundle / store_mod.METADATA).unlink()
        os.symlink(outside / store_mod.METADATA, bundle / store_mod.METADATA)
        expected = "bundle.json is a symlink"
    elif kind == "model-dir":
        shutil.rmtree(bundle / store_mod.MODEL_DIR)
        os.symlink(outside / store_mod.MODEL_DIR, bundle / store_mod.MODEL_DIR)
        expected = "model is a symlink"
    elif kind == "bundle-dir":
        shutil.rmtree(bundle)
        os.symlink(outside, bundle)
        expected = "not a directory of this store"
    else:
        os.mkfifo(bundle / "extra")
        expected = "extra is not a regular file"
    with pytest.raises(ModelLoadError, match=expected):
        load_bundle(bundle, trusted_keys())
    with pytest.raises(store_mod.BundleError, match=expected):
        store_mod.verify_manifest(bundle)
    assert load_bundle(outside, trusted_keys()).version == "1"  # the same bytes, as regular files, load
