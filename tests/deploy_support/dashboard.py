"""deploy/grafana/ebbtide.json read as Grafana reads it: its panels and their PromQL queries, and each query
as Prometheus receives it once Grafana has put in the dashboard's variables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "ebbtide.json"
# What Grafana puts in for the variables: every function ("All" is `allValue`), a rate window of a few
# scrapes (compose scrapes every 5 s).
VARIABLES = {"$function": ".*", "$__rate_interval": "1m"}


@dataclass(frozen=True)
class Query:
    panel: str  # the panel's title
    ref_id: str
    expr: str  # as written in the dashboard

    @property
    def promql(self) -> str:
        text = self.expr
        for name, value in VARIABLES.items():
            text = text.replace(name, value)
        return text


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (not the rows), in the order of the file."""
    found = []
    for panel in dashboard["panels"]:
        found += [panel] if panel["type"] != "row" else []
        found += panel.get("panels", []) if panel["type"] == "row" else []
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [Query(p["title"], t["refId"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
