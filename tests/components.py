"""What a test needs from the machine, and what happens when it is missing: one rule for the whole suite.

Two kinds of missing things:

- a component the project installs itself (`.ci/run` and `make setup`: the Docker engine and the CI
  stand-in images, Node.js from PyPI, nats-server, componentize-py, openssl, the npm packages a test
  installs): `require(...)`. On a developer's machine the test skips, saying what is missing and how to
  get it; under CI it FAILS with the same words, so CI can never go green by skipping what it should run.
- something the project cannot install here (kubectl: no Kubernetes on these machines; running as root):
  `may_skip(...)`, which skips everywhere and says so in the skip reason (`pytest -rs` lists them).

Under CI means `CI` is set to true (what CI runners export) or `EBBTIDE_CI=1` (what `.ci/run` exports).
"""

from __future__ import annotations

import os

import pytest

NOT_INSTALLABLE = "not installable by the project here"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") or os.environ.get("EBBTIDE_CI") == "1"


def require(missing: str | None, component: str) -> None:
    """Go on when `missing` is None; else skip (locally) or fail (under CI): `component` is missing because
    `missing`. Call it where a test would have skipped."""
    if missing is None:
        return
    message = f"{component} is missing: {missing}"
    if under_ci():
        pytest.fail(f"{message} (under CI this must not skip: .ci/run installs it)", pytrace=False)
    pytest.skip(message)


def may_skip(reason: str) -> None:
    """Skip, locally and under CI alike: what the test needs is something the project cannot install."""
    pytest.skip(f"{NOT_INSTALLABLE}: {reason}")
