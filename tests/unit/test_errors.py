"""One error hierarchy: every error ebbtide raises on purpose is an EbbtideError, and the CLI maps its two
branches to exit codes in one place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import ebbtide
from ebbtide import cli, errors
from ebbtide.errors import EbbtideError, MessageError, RunError, UsageError

# Internal signals that never leave their module (an HTTP parser's 400, a "no message" marker).
PRIVATE = {"_BadRequest", "_NoMessage"}


def _product_modules() -> list[str]:
    names = []
    for module in pkgutil.walk_packages(ebbtide.__path__, "ebbtide."):
        if module.name.startswith("ebbtide.workload.baselines") or module.name == "ebbtide.__main__":
            continue  # programs: the baselines run as their own processes; __main__ runs the CLI
        names.append(module.name)
    return names


@pytest.mark.parametrize("name", _product_modules())
def test_every_exception_class_of_the_package_is_an_ebbtide_error(name: str) -> None:
    module = importlib.import_module(name)
    for cls_name, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != name or not issubclass(cls, BaseException) or cls_name in PRIVATE:
            continue
        assert issubclass(cls, EbbtideError), f"{name}.{cls_name} is not an ebbtide.errors.EbbtideError"


def test_the_hierarchy_has_a_usage_a_run_and_a_per_message_branch() -> None:
    branches = {UsageError: [], RunError: [], MessageError: []}
    for cls in vars(errors).values():
        if inspect.isclass(cls) and issubclass(cls, EbbtideError) and cls not in (EbbtideError, *branches):
            parents = [branch for branch in branches if issubclass(cls, branch)]
            assert len(parents) == 1, f"{cls.__name__} belongs to {parents}"
            branches[parents[0]].append(cls.__name__)
    assert {"ManifestError", "AuthConfigError"} <= set(branches[UsageError])
    assert {"BuildError", "ModuleLoadError", "PublishError"} <= set(branches[RunError])
    assert {"GuestFault", "EffectRefused"} <= set(branches[MessageError])


def test_a_bad_metrics_port_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EBBTIDE_METRICS_PORT", "nine")
    assert cli.main(["up", "--help"]) == 2
    err = capsys.readouterr().err
    assert "EBBTIDE_METRICS_PORT must be a port number, not 'nine'" in err and "Traceback" not in err


def test_a_missing_manifest_says_where_to_run_and_how_to_name_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a folder with no ebbtide.toml: a newcomer's first `ebbtide top` elsewhere
    assert cli.main(["top"]) == 2
    err = capsys.readouterr().err
    assert "ebbtide.toml: cannot read manifest" in err and "-m PATH" in err and "Traceback" not in err
    assert cli.main(["-m", str(tmp_path / "other.toml"), "top"]) == 2
    assert "other.toml: cannot read manifest" in capsys.readouterr().err
