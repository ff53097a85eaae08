"""Type checks of the trainer config fields, read from their annotations.

Configs arrive as JSON-like dicts (TFX's `custom_config`), so a value can have the wrong
type: a string for a number, 2.5 for a count, NaN, or "false" for a flag, which Python
reads as true. The range checks compare values, so they would fail with a bare TypeError
or let such a value through into training. These checks run first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

_ELEMENT_NAMES = {"int": "integers", "str": "strings"}

# Seeds must be below it, because NumPy's random generators take seeds in [0, 2**32).
SEED_LIMIT = 2**32


def coerce_json_values(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Return `values` with JSON forms turned into the field types of dataclass `cls`.

    A list becomes a tuple for a tuple field, because JSON has no tuples. A float with an
    integral value (30.0) becomes an int for an int field, because protobuf's Struct and
    Value, which carry Kubeflow Pipelines parameters, store every number as a double.
    Anything else is left for `check_field_types`.
    """
    converted = dict(values)
    for field in dataclasses.fields(cls):
        if field.name not in converted:
            continue
        value = converted[field.name]
        annotation = _base_annotation(field.type)
        if annotation.startswith("tuple[") and isinstance(value, list):
            converted[field.name] = tuple(value)
        elif annotation == "int" and isinstance(value, float) and value.is_integer():
            converted[field.name] = int(value)
    return converted


def check_field_types(config: Any, label: str) -> None:
    """Raise ValueError naming the first field whose value does not match its annotation.

    Args:
      config: A dataclass instance whose annotations are int, float, bool, str,
        tuple[int, ...] or tuple[str, ...], each optionally `| None`.
      label: The config's name at the start of the message, e.g. "Stage I config".

    Raises:
      ValueError: A value of the wrong type, or a float that is NaN or infinite.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None and field.type.replace(" ", "").endswith("|None"):
            continue
        problem = _type_problem(_base_annotation(field.type), value)
        if problem:
            raise ValueError(f"{label} {field.name}={value!r} is invalid: {problem}")


def _base_annotation(annotation: str) -> str:
    annotation = annotation.replace(" ", "")
    return annotation.removesuffix("|None")


def _type_problem(annotation: str, value: Any) -> str | None:
    if annotation == "bool":
        return None if isinstance(value, bool) else "use true or false"
    if annotation == "int":
        return None if _is_int(value) else "use an integer"
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "use a number"
        return None if math.isfinite(value) else "use a finite number"
    if annotation == "str":
        return None if isinstance(value, str) else "use a string"
    if annotation.startswith("tuple[") and annotation.endswith(",...]"):
        element = annotation[len("tuple[") : -len(",...]")]
        expected = f"use a list of {_ELEMENT_NAMES[element]}"
        if isinstance(value, list):
            # Only the constructor gets here with a list: from_dict turns lists into tuples.
            return f"use a tuple of {_ELEMENT_NAMES[element]} (from_dict also accepts a list)"
        if not isinstance(value, tuple):
            return expected
        return expected if any(_type_problem(element, item) for item in value) else None
    raise TypeError(f"check_field_types has no rule for the annotation {annotation!r}")


def _is_int(value: Any) -> bool:
    # bool is a subclass of int, but True is no count.
    return isinstance(value, int) and not isinstance(value, bool)
