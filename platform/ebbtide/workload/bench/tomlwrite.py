"""A small TOML writer for manifest variants (the standard library reads TOML but does not write it).

Writes one `key = value` line per top-level key, nested tables inline; enough for what `msgspec.to_builtins`
makes of a manifest: tables, arrays, strings, integers, floats and booleans (None left out).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML float {value!r} is not written by this writer")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps(table: dict[str, Any]) -> str:
    """`None` values are left out: TOML has no null, and a manifest's None is its field's default."""
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in table.items() if v is not None)
