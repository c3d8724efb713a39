"""The metric names ebbtide exports, from the code that renders them, so that the alert rules and the
dashboard can be checked for names that do not exist (a misspelt metric is a query that never matches:
an alert that never fires, a panel that stays empty)."""

from __future__ import annotations

import re

from ebbtide.telemetry.histogram import END_TO_END_BUCKETS_S, HANDLE_BUCKETS_S, Histogram
from ebbtide.telemetry.metrics import collect
from ebbtide.telemetry.nats_monitor import MonitorReading
from ebbtide.telemetry.nats_monitor import collect as collect_nats
from ebbtide.telemetry.snapshot import HostSnapshot, PoolSnapshot

# Contract names of metrics other parts serve (DESIGN.md, the issues that add them): the lag `ebbtide scaler`
# reads per function.
ELSEWHERE = {"ebbtide_scaler_lag"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# A metric name, not part of a recording rule's `level:metric:operations` name.
NAME = re.compile(r"(?<![\w:])ebbtide_\w+(?![\w:])")


def exported() -> set[str]:
    """Every sample name a function process and `ebbtide nats-exporter` serve (a pool that ran a candidate,
    so that the rollout families are there too)."""
    pool = PoolSnapshot(
        function="f",
        processed=0,
        dead_lettered=0,
        refused=0,
        retried=0,
        dead_letters={},
        guest_faults={},
        instances_started=0,
        instances_stopped=0,
        reloads={},
        live_instances=0,
        in_flight=0,
        backlog=0,
        oldest_pending_s=0.0,
        handle=Histogram(HANDLE_BUCKETS_S),
        end_to_end=Histogram(END_TO_END_BUCKETS_S),
        shadow={"same": 1},
        canary={("live", "ok"): 1},
    )
    names: set[str] = set()
    for family in collect(HostSnapshot([pool], nats_connected=True, ready=True)):
        names |= {family.name + s for s in HISTOGRAM_SUFFIXES} if family.kind == "histogram" else {family.name}
    names |= {family.name for family in collect_nats([MonitorReading("http://n:8222")], {})}
    return names


def unknown_metrics(text: str) -> set[str]:
    """The `ebbtide_*` names in `text` (PromQL) that nothing exports."""
    return set(NAME.findall(text)) - exported() - ELSEWHERE
