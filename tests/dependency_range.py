"""The versions of a dependency that ebbtide declares it runs on (pyproject.toml: `name>=low,<high`), for the
guard tests of the internals it uses (tests/unit/test_nats_fast.py, tests/unit/test_wasmtime_fast.py).
`.ci/dependency-range` runs those tests, and a short pipeline, on the lowest and the highest release of
each range; the exact versions `make` and the image install are in constraints.txt."""

from __future__ import annotations

import importlib.metadata
import re


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def declared_range(distribution: str) -> tuple[str, str]:
    """(lowest allowed, first excluded) of `distribution` in ebbtide's own requirements."""
    for requirement in importlib.metadata.requires("ebbtide") or ():
        name = re.match(r"\s*([A-Za-z0-9_.-]+)", requirement)
        if name is None or name[1] != distribution:
            continue
        bounds = dict(re.findall(r"(>=|<)\s*([\d.]+)", requirement[name.end() :].split(";")[0]))
        if set(bounds) == {">=", "<"}:
            return bounds[">="], bounds["<"]
    raise AssertionError(f"ebbtide declares no `{distribution}>=low,<high` requirement")


def installed_is_declared(distribution: str) -> str:
    """The installed version of `distribution`, asserted to be within the range ebbtide declares."""
    installed = importlib.metadata.version(distribution)
    low, high = declared_range(distribution)
    assert _release(low) <= _release(installed) < _release(high), f"{distribution} {installed} is outside >={low},<{high}"
    return installed


def at_least(distribution: str, version: str) -> bool:
    return _release(importlib.metadata.version(distribution)) >= _release(version)
