"""deploy/grafana/: the dashboard checked against the structure of Grafana's own schema (the types of
grafana-foundation-sdk, generated from Grafana's schema for the version compose runs), its queries valid
PromQL on metrics that exist, and compose's provisioning consistent with it. Grafana itself cannot be pulled
here; its queries run against compose's real Prometheus in tests/compose/test_compose_e2e.py.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.cog.runtime import UnknownDataquery, panelcfg_config
from grafana_foundation_sdk.models.dashboard import Dashboard
from grafana_foundation_sdk.models.prometheus import Dataquery as PrometheusQuery

from tests.conftest import REPO
from tests.deploy_support import dashboard as board
from tests.deploy_support.metric_names import unknown_metrics

GRAFANA = REPO / "deploy" / "grafana"
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
COMPOSE_FILE = REPO / "docker-compose.yml"
SDK_GRAFANA_VERSION = "11.6"  # grafana-foundation-sdk's types are for this version (pyproject pins it)
# The panels the issue asks for, by what they show (each at least one panel whose title says so).
REQUIRED_PANELS = (
    "Backlog and instances",
    "Throughput",
    "Handle time p50 / p99",
    "End-to-end latency p50 / p99",
    "Dead letters by reason",
    "Retries and guest faults",
    "Oldest pending message",
    "Shadow verdicts",
    "Canary results",
    "Replicas ready",
    "Memory per replica",
)


def missing_from(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """What of `ours` is not in `theirs` with the same value (`theirs` may add its defaults)."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [f"{path}: not an object there"]
        return [m for key, value in ours.items() for m in missing_from(value, theirs.get(key, _ABSENT), f"{path}.{key}")]
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [f"{path}: not the same list there"]
        return [m for i, (a, b) in enumerate(zip(ours, theirs)) for m in missing_from(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} became {theirs!r}" if theirs is not _ABSENT else f"{path}: unknown"]


_ABSENT = object()


def schema_errors(dashboard: dict[str, Any]) -> list[str]:
    """The dashboard decoded with the SDK's types and encoded again: a key the schema does not know is
    dropped, so it shows up here; so does a value that does not survive (a wrong type of a typed field)."""
    register_default_plugins()
    decoded = Dashboard.from_json(copy.deepcopy(dashboard))
    errors = missing_from(dashboard, json.loads(json.dumps(decoded, cls=JSONEncoder)))
    for panel in decoded.panels or []:
        if getattr(panel, "type_val", "row") == "row":
            continue
        if panelcfg_config(panel.type_val) is None:
            errors.append(f"panel {panel.title!r}: unknown panel type {panel.type_val!r}")
        for target in getattr(panel, "targets", None) or []:
            if isinstance(target, UnknownDataquery) or not isinstance(target, PrometheusQuery):
                errors.append(f"panel {panel.title!r}: a query that is not a Prometheus query")
    return errors


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return board.load()


def test_the_dashboard_has_the_structure_of_grafanas_schema(dashboard: dict[str, Any]) -> None:
    assert schema_errors(dashboard) == []
    assert dashboard["schemaVersion"] == Dashboard().schema_version  # the SDK's, i.e. Grafana 11.6's
    # The check really checks: misspelt keys (of the dashboard, a panel's options, a query), a panel of
    # another data source.
    broken = copy.deepcopy(dashboard)
    broken["refrsh"] = "5s"
    target = next(p for p in board.panels(broken))
    target["options"]["legend"]["placment"] = "bottom"
    target["targets"][0]["exp"] = target["targets"][0].pop("expr")
    another = board.panels(broken)[1]
    another["datasource"] = {"type": "loki", "uid": "x"}
    errors = schema_errors(broken)
    assert any(e.startswith(".refrsh") for e in errors) and any("placment" in e for e in errors), errors
    assert any("not a Prometheus query" in e for e in errors), errors


def test_panels_and_their_queries(dashboard: dict[str, Any]) -> None:
    """Listed from the JSON: every panel the issue names is there, each shows data of Prometheus and filters
    by the `function` variable where its metric has that label."""
    panels = board.panels(dashboard)
    queries = board.queries(dashboard)
    for needed in REQUIRED_PANELS:
        assert any(needed in panel["title"] for panel in panels), needed
    assert all(panel.get("targets") for panel in panels), "a panel without a query"
    print("\n".join(f"{q.panel} [{q.ref_id}]: {q.expr}" for q in queries))
    per_function = [q for q in queries if "JetStream" not in q.panel and "Stream" not in q.panel]
    assert all('function=~"$function"' in q.expr for q in per_function), [q.expr for q in per_function]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["function"]["includeAll"] and variables["function"]["allValue"] == board.VARIABLES["$function"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_queries_are_promql_on_metrics_that_exist(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query, with the variables Grafana puts in, parsed by promtool (as a recording rule's
    expression); each metric one that ebbtide exports or a rule of alerts.yml records."""
    queries = board.queries(dashboard)
    text = " ".join(q.expr for q in queries)
    assert unknown_metrics(text) == set()
    recorded = {
        rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "record" in rule
    }
    used = set(re.findall(r"\b\w+:\w+:\w+\b", text))
    assert used and used <= recorded, used - recorded
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (`bash .ci/promtool`): the queries' syntax is not checked")
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q{i}", "expr": q.promql} for i, q in enumerate(queries)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_provisions_the_data_source_and_the_dashboard(dashboard: dict[str, Any]) -> None:
    """Under the profile `grafana`: the data source is compose's Prometheus, the dashboards folder is where
    compose mounts ebbtide.json, and the dashboard's data source variable defaults to the provisioned one."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["grafana"]
    assert grafana["image"].split(":")[1].startswith(SDK_GRAFANA_VERSION + ".")
    mounts = dict(str(v).rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert all(str(v).endswith(":ro") for v in grafana["volumes"]), "read-only mounts"
    provisioning = Path(mounts["./deploy/grafana/provisioning"])
    assert provisioning == Path("/etc/grafana/provisioning")
    [source] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus_port = int(compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1])
    assert source["url"] == f"http://prometheus:{prometheus_port}" and source["type"] == "prometheus"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ebbtide.yml").read_text())["providers"]
    assert Path(mounts["./deploy/grafana/ebbtide.json"]).parent == Path(provider["options"]["path"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == source["uid"]
    assert "prometheus" in grafana["depends_on"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer" and env["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert provider["allowUiUpdates"] is False
