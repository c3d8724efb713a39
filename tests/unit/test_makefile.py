"""`make test` prints why each skipped test skipped (issue 27: it printed "6 skipped" and no reason, where the
README says a test that needs a tool PyPI does not provide skips and names it)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="no `make` on this machine")
def test_make_test_reports_the_reason_of_every_skip(tmp_path) -> None:
    # -n: print the recipe without running it; a venv of its own so that nothing of the checkout is touched
    done = subprocess.run(
        ["make", "-n", "test", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # The venv's pytest (tmp_path itself lies under a folder named pytest-of-<user>: every line names it)
    [pytest_line] = [line for line in done.stdout.splitlines() if line.startswith(f"{tmp_path / 'venv'}/bin/pytest ")]
    options = [word for word in shlex.split(pytest_line, comments=True) if word.startswith("-r")]
    assert any("s" in option[2:] or "a" in option[2:] or "A" in option[2:] for option in options), pytest_line
