"""Observability served by each host process: Prometheus metrics and health endpoints over HTTP.

server = TelemetryServer(lambda: render_metrics(host.snapshot()), host.readiness, port=9464)
await server.start()   # server.port: the bound port (useful with port=0)
...
await server.stop()
"""

from .http import TelemetryServer
from .metrics import CONTENT_TYPE, collect, render_metrics, resident_memory_bytes
from .snapshot import HostSnapshot, PoolSnapshot

__all__ = [
    "CONTENT_TYPE",
    "HostSnapshot",
    "PoolSnapshot",
    "TelemetryServer",
    "collect",
    "render_metrics",
    "resident_memory_bytes",
]
