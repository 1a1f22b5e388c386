"""What the stand-in tables of bench/tables.py share: the structure seed, the logistic function, integers with
blanks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# The seed of everything that is the same whatever the sample seed: codes, distances, fleets, districts, effects.
STRUCTURE_SEED = 21


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def nullable_int(values: np.ndarray, missing: np.ndarray) -> Any:
    """Integers with blanks (pandas' Int64 array: written to CSV as empty fields, as most exports do)."""
    array = pd.array(np.asarray(values, dtype=np.int64), dtype="Int64")
    array[np.asarray(missing, dtype=bool)] = pd.NA
    return array
