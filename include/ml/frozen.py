"""The base of every config model, and the read-only mapping field they share.

Every model of the three YAML files (config_file.py, schema_file.py, params_file.py) is frozen (no stage can change
its config), strict (YAML `"0.2"` is not a number, `true` is not an int) and forbids unknown keys (a typo fails with
the valid keys listed).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated, Any, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, PlainSerializer

# A read-only mapping (a frozen model's dict would still be mutable), dumped as a plain dict.
FrozenMapping = Annotated[Mapping[str, Any], AfterValidator(MappingProxyType), PlainSerializer(dict)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

