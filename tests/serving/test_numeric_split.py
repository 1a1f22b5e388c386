"""A numbers-only `dataframe_split` (serving/body.py: NumericRows) is validated without the general path's per-value
work, and with exactly its outcome: the same batch, or the same error for every body the fast path cannot take."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serving.body import InputError, NumericRows, decode_any, mlflow_input, mlflow_json
from serving.contract import Contract, Feature
from serving.inputs import validate
from serving.limits import request_limits

NUMERIC = Contract("regression", (Feature("x", "float", nullable=True, min=-10, max=10),
                                  Feature("n", "int", min=0, max=100),
                                  Feature("z", "float")))
MIXED = Contract("regression", NUMERIC.features + (Feature("kind", "category", allowed=("p", "q")),))
MAX_ROWS = 3
LIMITS = request_limits(MAX_ROWS, 0, 0, len(MIXED.accepted))


def split(columns: list[Any], data: Any, **extra: Any) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}, **extra}).encode()


COLUMNS = ["x", "n", "z"]
TAKEN = {  # the fast path answers these itself
    "one row": split(COLUMNS, [[1.5, 3, -2e9]]),
    "three rows": split(COLUMNS, [[1.5, 3, 0.0], [-10, 0, 7], [10.0, 100, 1e300]]),
    "integers as floats, -0": split(COLUMNS, [[-0, 4.0, 1]]),
    "a huge integer": split(COLUMNS, [[1, 1, 10 ** 30]]),
}
GENERAL = {  # the general path answers these: valid in another form, or invalid
    "columns in another order": split(["z", "x", "n"], [[1.0, 2.0, 3]]),
    "out of range": split(COLUMNS, [[11.0, 3, 0]]),
    "not an integer": split(COLUMNS, [[1.0, 2.5, 0]]),
    "a boolean": split(COLUMNS, [[True, 2, 0]]),
    "null where nullable": split(COLUMNS, [[None, 2, 0]]),
    "null where not nullable": split(COLUMNS, [[1.0, None, 0]]),
    "a string": split(COLUMNS, [["1", 2, 0]]),
    "a missing column": split(["x", "n"], [[1.0, 2]]),
    "an unknown column": split([*COLUMNS, "w"], [[1.0, 2, 0, 0]]),
    "a repeated column": split(["x", "x", "n"], [[1.0, 1.0, 2]]),
    "a short row": split(COLUMNS, [[1.0, 2]]),
    "params": split(COLUMNS, [[1.0, 2, 0]], params={"a": 1}),
    "not params": split(COLUMNS, [[1.0, 2, 0]], other=1),
    "no rows": split(COLUMNS, []),
    "too many rows": split(COLUMNS, [[1.0, 2, 0]] * (MAX_ROWS + 1)),
    "NaN literal": b'{"dataframe_split": {"columns": ["x", "n", "z"], "data": [[NaN, 2, 0]]}}',
    "infinity literal": b'{"dataframe_split": {"columns": ["x", "n", "z"], "data": [[1, 2, Infinity]]}}',
    "a number beyond doubles": split(COLUMNS, [[1.0, 2, 10 ** 400]]),
    "columns not strings": split([1, 2, 3], [[1.0, 2, 0]]),
    "rows not lists": split(COLUMNS, [1.0, 2, 0]),
    "records": json.dumps({"dataframe_records": [{"x": 1.0, "n": 2, "z": 0}]}).encode(),
    "malformed": b'{"dataframe_split": {"columns": ["x"',
}


def outcome(read: Any, body: bytes, contract: Contract) -> tuple[Any, ...]:
    try:
        batch = validate(read(body), contract, max_rows=MAX_ROWS)
    except InputError as exc:  # a limit's message: "more than 3 rows" from the typed decoder, "4 rows" after
        return "error", exc.status, exc.code, exc.message if exc.status != 413 else "", exc.details
    columns = {name: [None if v != v else v for v in values.tolist()] for name, values in batch.columns.items()}
    return ("batch", batch.n_rows, columns, batch.warnings, batch.contract_hash,
            None if batch.numeric is None else batch.numeric.tolist())


def general(body: bytes) -> Any:
    return mlflow_input(decode_any(body))


def fast(body: bytes) -> Any:
    return mlflow_json(body, LIMITS)


@pytest.mark.parametrize("contract", [NUMERIC, MIXED], ids=["numeric features", "with a category"])
@pytest.mark.parametrize("body", [*TAKEN.values(), *GENERAL.values()], ids=[*TAKEN, *GENERAL])
def test_same_outcome_as_the_general_path(body: bytes, contract: Contract) -> None:
    assert outcome(fast, body, contract) == outcome(general, body, contract)


@pytest.mark.parametrize("body", TAKEN.values(), ids=TAKEN)
def test_the_fast_path_answers_plain_numeric_frames(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = fast(body)
    assert isinstance(rows, NumericRows)

    def no_general_path(self: NumericRows, keys: object) -> None:
        raise AssertionError("went the general way")

    monkeypatch.setattr(NumericRows, "as_columns", no_general_path)
    batch = validate(rows, NUMERIC, max_rows=MAX_ROWS)
    assert batch.numeric.shape == (batch.n_rows, 3) and batch.numeric.flags.c_contiguous
