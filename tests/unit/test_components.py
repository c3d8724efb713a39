"""The suite's one rule for missing components (tests/components.py): skipped on a developer's machine,
failed under CI, where .ci/run installs them; what the project cannot install skips everywhere."""

from __future__ import annotations

import pytest

from tests.components import NOT_INSTALLABLE, may_skip, require, under_ci


@pytest.mark.parametrize(
    ("environment", "ci"),
    [({}, False), ({"CI": "true"}, True), ({"CI": "1"}, True), ({"CI": "false"}, False), ({"EBBTIDE_CI": "1"}, True)],
)
def test_under_ci_is_what_ci_runners_and_ci_run_export(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], ci: bool
) -> None:
    for name in ("CI", "EBBTIDE_CI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert under_ci() is ci


def test_a_missing_component_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CI", "EBBTIDE_CI"):
        monkeypatch.delenv(name, raising=False)
    require(None, "anything")  # present: nothing happens
    with pytest.raises(pytest.skip.Exception, match="the engine is missing: no dockerd"):
        require("no dockerd", "the engine")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="the engine is missing: no dockerd .*under CI this must not skip"):
        require("no dockerd", "the engine")
    with pytest.raises(pytest.skip.Exception, match=f"{NOT_INSTALLABLE}: no kubectl"):
        may_skip("no kubectl")
