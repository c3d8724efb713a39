"""deploy/prometheus/: the alerting and recording rules checked and unit-tested with promtool (Debian's
prometheus package has it; `.ci/promtool` installs it for CI), every alert made to fire and not to fire by
alerts.test.yml, every metric the rules read one that ebbtide exports, and compose's Prometheus
configuration checked by promtool as it is mounted (with the rules beside it).

Compose's real Prometheus loads and evaluates these rules on the pipeline's own metrics in
tests/compose/test_compose_e2e.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy_support.metric_names import unknown_metrics

PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
ANNOTATIONS = {"summary", "description", "runbook"}
SEVERITIES = {"warning", "critical"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; `bash .ci/promtool` installs the binary alone)")
    return found


def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass_and_would_fail(promtool: str, tmp_path: Path) -> None:
    done = run(promtool, "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    # The tests really compare: an expected label that differs fails them.
    shutil.copy(RULES, tmp_path / RULES.name)
    broken = RULE_TESTS.read_text().replace("function: distributor", "function: receiver-express", 1)
    (tmp_path / RULE_TESTS.name).write_text(broken)
    done = run(promtool, "test", "rules", str(tmp_path / RULE_TESTS.name), cwd=tmp_path)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr, done.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [case for group in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in group.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert set(alerts()) == fires == quiet, (set(alerts()) - fires, set(alerts()) - quiet)
    assert yaml.safe_load(RULE_TESTS.read_text())["rule_files"] == [RULES.name]


def test_every_alert_says_what_it_means_and_what_to_run_first() -> None:
    for name, rule in alerts().items():
        assert name.startswith("Ebbtide"), name
        assert set(rule["annotations"]) == ANNOTATIONS, name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert all(rule["annotations"][key].strip() for key in ANNOTATIONS), name
    assert len({rule["alert"] for rule in rules() if "alert" in rule}) == len([r for r in rules() if "alert" in r])


def test_the_rules_read_only_metrics_that_exist() -> None:
    assert unknown_metrics(RULES.read_text()) == set()
    assert unknown_metrics("ebbtide_messages_totl") == {"ebbtide_messages_totl"}  # the check really checks


def test_compose_prometheus_configuration_loads_the_rules(promtool: str, tmp_path: Path) -> None:
    """promtool checks prometheus.yml and the rule files it names, laid out as compose mounts them (the
    metrics token in place of the one `credentials` makes)."""
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    [token_path] = {job["authorization"]["credentials_file"] for job in config["scrape_configs"] if "authorization" in job}
    token = tmp_path / "metrics.token"
    token.write_text("token\n")
    (tmp_path / CONFIG.name).write_text(CONFIG.read_text().replace(token_path, str(token)))
    shutil.copy(RULES, tmp_path / RULES.name)
    done = run(promtool, "check", "config", str(tmp_path / CONFIG.name), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout
