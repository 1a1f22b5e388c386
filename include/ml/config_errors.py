"""The wording of configuration errors: what a YAML file or a pydantic validation error becomes as a `ConfigError`
naming the file, the key path as the user wrote it, and what was expected (the valid keys on a typo)."""

from __future__ import annotations

import typing
from pathlib import Path
from types import UnionType
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from include.ml.exceptions import ConfigError

# --- reading ---------------------------------------------------------------------------------------------------------

def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), "", "file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), "", f"malformed YAML: {where}{getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top level, got {_kind(data)}")
    return data


_M = typing.TypeVar("_M", bound=BaseModel)
_EXPECTED_TYPE = {"float_type": "float", "int_type": "int", "bool_type": "bool", "string_type": "str",
                  "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
                  "tuple_type": "a list", "list_type": "a list", "path_type": "a path"}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most"),
           "too_short": ("min_length", "this many entries at least:")}


def validated(model: type[_M], raw: dict[str, Any], path: Path, origins: Mapping[str, str] | None = None) -> _M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(model, exc.errors()[0], raw, path, origins or {}) from None


def _config_error(model: type[BaseModel], error: Any, raw: Any, path: Path, origins: Mapping[str, str]) -> ConfigError:
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = ".".join(_named(loc, raw))
    got = f", got {_kind(value)} {value!r}"
    if kind == "missing":
        problem = "missing required key"
    elif kind == "extra_forbidden":
        parent = _annotation_at(model, loc[:-1])
        valid = sorted(f.alias or name for name, f in parent.model_fields.items()) \
            if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        problem = f"unknown key; expected one of: {', '.join(valid)}"
    elif kind == "literal_error":
        problem = f"expected one of {', '.join(map(str, typing.get_args(_annotation_at(model, loc))))}{got}"
    elif kind == "value_error":
        problem = str(error["ctx"]["error"])
    elif kind in _EXPECTED_TYPE:
        problem = f"expected {_EXPECTED_TYPE[kind]}{got}"
    elif kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        problem = f"expected {words} {error['ctx'][name]}{got}"
    else:
        problem = f"{error['msg']}{got}"
    if key in origins:
        problem += f" (from {origins[key]})"
    return ConfigError(str(path), key, problem)


def _named(loc: tuple[Any, ...], raw: Any) -> list[str]:
    """The key path as the user wrote it: schema.yaml's columns are a mapping the model reads as a list."""
    names, node = [], raw
    for part in loc:
        if isinstance(part, int) and isinstance(node, dict) and part < len(node):
            part = list(node)[part]
        names.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return names


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The type a key path leads to, stepping through models, optionals and containers."""
    annotation: Any = model
    for part in loc:
        annotation = _strip_optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = annotation.model_fields
            field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None) \
                if isinstance(part, str) else None
            annotation = field.annotation if field else None
        else:  # a tuple or mapping: its element type
            args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            annotation = args[-1] if args else None
    return _strip_optional(annotation)


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        others = [a for a in typing.get_args(annotation) if a is not type(None)]
        return others[0] if len(others) == 1 else annotation
    return annotation


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
