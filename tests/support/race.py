"""Issue 22, finding 3: a file swapped on disk between the loader's hash and its read. A thread swaps a bundle's
model file and card with hostile twins in a tight loop (tests/serving/test_load_once*.py)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from serving import store as store_mod
from tests.support.bundles import add_card, make_bundle
from tests.support.pointers import point

SIGNED_CARD = "<!doctype html><html><body><h1>the signed card</h1></body></html>\n"
HOSTILE_CARD = "<!doctype html><html><body><h1>HOSTILE</h1><script>alert(1)</script></body></html>\n"


class Swapper:
    """Replaces each target file with its hostile twin and back, atomically (rename), in a tight loop."""

    def __init__(self, pairs: dict[Path, bytes]) -> None:
        self.pairs = {target: (target.read_bytes(), hostile) for target, hostile in pairs.items()}
        self.scratch = Path(os.path.commonpath(list(pairs))).parent  # the same filesystem: renames are atomic
        self.swaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for which in (1, 0):
                for target, contents in self.pairs.items():
                    tmp = self.scratch / f".{target.name}.swap"  # beside the bundle, never in it
                    tmp.write_bytes(contents[which])
                    os.replace(tmp, target)
                self.swaps += 1
                self._stop.wait(0.002)

    def __enter__(self) -> Swapper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for target, contents in self.pairs.items():
            target.write_bytes(contents[0])


def race_store(bundles: Path, tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    """A store with 1 and a carded 2 (CURRENT: 1), and the hostile twins of 2's model file and card."""
    store = tmp_path / "store"
    for version in ("1", "2"):
        shutil.copytree(bundles / version, store / version)
    add_card(store / "2", SIGNED_CARD)
    other = make_bundle(tmp_path / "other", "2", offset=-100.0)  # a valid model, predictions 200 below 2's
    model_file = next((store / "2" / store_mod.MODEL_DIR).glob("model.*"))
    hostile = {model_file: (other / store_mod.MODEL_DIR / model_file.name).read_bytes(),
               store / "2" / store_mod.CARD_HTML: HOSTILE_CARD.encode()}
    point(store, "1")
    return store, hostile
