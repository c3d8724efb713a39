"""Observability served by each host process: Prometheus metrics and health endpoints over HTTP.

    server = TelemetryServer(lambda: render_metrics(host), lambda: host_readiness(host), port=9464)
    await server.start()   # server.port: the bound port (useful with port=0)
    ...
    await server.stop()
"""

from .http import TelemetryServer
from .metrics import CONTENT_TYPE, collect, host_readiness, render_metrics, resident_memory_bytes

__all__ = ["CONTENT_TYPE", "TelemetryServer", "collect", "host_readiness", "render_metrics", "resident_memory_bytes"]
