"""`ebbtide nats-exporter`: the JetStream figures only nats-server knows (store use against its limit, each
stream's bytes against its `max_bytes`, the trigger streams' `max_age`) on /metrics for Prometheus.

It reads each server's monitoring port (`/varz`, `/jsz`) every `--interval` seconds and serves the last
reading (telemetry/nats_monitor.py renders it). It holds no NATS credentials and publishes nothing: the
monitoring port needs none, so this process can do nothing on the bus. /readyz is 200 while at least one
server answered the last reading; `ebbtide_nats_monitor_up{monitor}` says which did not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import urllib.request
from collections.abc import Sequence

from ..errors import UsageError
from ..manifest import LoadedManifest
from ..telemetry.http import TelemetryServer
from ..telemetry.metrics import render_prometheus
from ..telemetry.nats_monitor import MonitorReading, collect

log = logging.getLogger("ebbtide.exporter")

REQUEST_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 32 << 20  # /jsz with every stream's details: far above what thousands of streams take
JSZ_QUERY = "/jsz?streams=true&config=true"


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as answer:
        body = answer.read(MAX_ANSWER_BYTES + 1)
    if len(body) > MAX_ANSWER_BYTES:
        raise ValueError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
    return json.loads(body)


def read_monitor(url: str) -> MonitorReading:
    """One server's /varz and /jsz; a server that does not answer (or answers nonsense) is said so, never raised."""
    try:
        varz, jsz = _get_json(url + "/varz"), _get_json(url + JSZ_QUERY)
    except (OSError, ValueError) as exc:  # refused, timed out, HTTP error, not JSON
        return MonitorReading(url, error=str(exc) or type(exc).__name__)
    if not isinstance(varz, dict) or not isinstance(jsz, dict):
        return MonitorReading(url, error="not a JSON object")
    return MonitorReading(url, varz, jsz)


class NatsExporter:
    """The last reading of every monitored server, refreshed by `run()`, rendered on each scrape."""

    def __init__(self, urls: Sequence[str], trigger_streams: dict[str, str]) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        self.trigger_streams = trigger_streams
        self.readings = [MonitorReading(url, error="not read yet") for url in self.urls]

    async def read(self) -> None:
        readings = await asyncio.gather(*(asyncio.to_thread(read_monitor, url) for url in self.urls))
        for before, now in zip(self.readings, readings):
            if now.answered != before.answered:
                if now.answered:
                    log.info("nats-exporter: %s answers", now.url)
                else:
                    log.warning("nats-exporter: %s does not answer: %s", now.url, now.error)
        self.readings = list(readings)

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.read()
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass

    def render(self) -> str:
        return render_prometheus(collect(self.readings, self.trigger_streams))

    def readiness(self) -> tuple[bool, str]:
        if any(reading.answered for reading in self.readings):
            return True, "ok"
        return False, "no NATS monitoring port answered: " + "; ".join(f"{r.url}: {r.error}" for r in self.readings)


def monitor_urls(args: argparse.Namespace, manifest: LoadedManifest) -> list[str]:
    """--monitor-url (repeated), else the embedded server's monitoring port of the manifest."""
    urls: list[str] = args.monitor_url or [f"http://127.0.0.1:{manifest.spec.embedded.monitor_port}"]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--monitor-url {url!r}: an http:// or https:// URL of a nats-server monitoring port")
    return urls


def nats_exporter_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be above 0 seconds")
    triggers = {name: manifest.stream_for(fn.trigger) for name, fn in manifest.spec.functions.items()}
    exporter = NatsExporter(monitor_urls(args, manifest), triggers)
    return asyncio.run(_serve(exporter, args.host, args.port, args.interval))


async def _serve(exporter: NatsExporter, host: str, port: int, interval_s: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with TelemetryServer(exporter.render, exporter.readiness, host=host, port=port) as server:
        log.info("nats-exporter: reading %s every %g s; /metrics on %s", ", ".join(exporter.urls), interval_s, server.url)
        await exporter.run(interval_s, stop)
    return 0
