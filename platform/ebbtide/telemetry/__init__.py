"""Observability served by each host process: Prometheus metrics and health endpoints over HTTP.

server = TelemetryServer(lambda: render_metrics(host.snapshot()), host.readiness, port=9464)
await server.start()   # server.port: the bound port (useful with port=0)
...
await server.stop()

The names below are imported from their module on first use, so that a process that only logs (the
supervisor of `ebbtide up`, every CLI command through telemetry.logs) does not load the HTTP server.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, typed, for type checkers
    from .http import TelemetryServer
    from .metrics import CONTENT_TYPE, collect, render_metrics, resident_memory_bytes
    from .snapshot import HostSnapshot, PoolSnapshot

_HOMES = {
    "TelemetryServer": "http",
    "CONTENT_TYPE": "metrics",
    "collect": "metrics",
    "render_metrics": "metrics",
    "resident_memory_bytes": "metrics",
    "HostSnapshot": "snapshot",
    "PoolSnapshot": "snapshot",
}

__all__ = [
    "CONTENT_TYPE",
    "HostSnapshot",
    "PoolSnapshot",
    "TelemetryServer",
    "collect",
    "render_metrics",
    "resident_memory_bytes",
]  # = _HOMES's keys, written out for the linters


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{home}", __name__), name)
