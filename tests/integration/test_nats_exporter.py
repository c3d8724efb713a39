"""`ebbtide nats-exporter` as its own process against real nats-servers' monitoring ports: the figures it
serves are the servers' own (stream info read through the JetStream API beside it), a server that stops
answering is said so, and it runs with no NATS credentials at all (it is given none: the servers here
require none on the monitoring port, as in compose and Kubernetes)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, free_port
from ebbtide.broker.provisioning import provision
from ebbtide.manifest import load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import manifest_copy, wait_until
from tests.integration.test_metrics_health import parse_exposition, value
from tests.reliability.conftest import Cluster, provisioned_cluster, replicated


class Exporter:
    """`python -m ebbtide nats-exporter` for one test; stopped with SIGTERM, which it must exit 0 on."""

    def __init__(self, manifest: Path, monitors: list[str], log: Path) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "ebbtide", "--manifest", str(manifest), "nats-exporter", "--port", str(self.port)]
        args += ["--interval", "0.2", *(a for url in monitors for a in ("--monitor-url", url))]
        self.log = log
        self.process = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    def metrics(self) -> dict[str, dict]:
        status, body = self.get("/metrics")
        assert status == 200, body
        return parse_exposition(body)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    started: list[Exporter] = []
    yield started
    for exporter in started:
        if exporter.process.poll() is None:
            exporter.process.kill()
            exporter.process.wait(10)


async def started(exporters: list[Exporter], manifest: Path, monitors: list[str], tmp_path: Path) -> Exporter:
    exporter = Exporter(manifest, monitors, tmp_path / f"exporter-{len(exporters)}.log")
    exporters.append(exporter)

    async def serving() -> bool:
        assert exporter.process.poll() is None, exporter.log.read_text()
        try:
            return (await asyncio.to_thread(exporter.get, "/readyz"))[0] == 200
        except OSError:
            return False

    await wait_until(serving, timeout=30, interval=0.1)
    return exporter


async def test_single_server_figures_are_the_servers_own(tmp_path: Path, exporters: list[Exporter]) -> None:
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0) as server:
        nc = NatsClient()
        await nc.connect(server.url)
        try:
            js = nc.jetstream()
            await provision(js, manifest)
            orders = generate_orders(50, seed=3)
            for order in orders:
                await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
            silent = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            exporter = await started(exporters, path, [server.monitor_url, silent], tmp_path)
            info = await js.stream_info("ORDERS")

            async def read_all() -> bool:
                return value(await asyncio.to_thread(exporter.metrics), "ebbtide_stream_messages", stream="ORDERS") == len(orders)

            await wait_until(read_all, timeout=10)
            families = await asyncio.to_thread(exporter.metrics)
            assert value(families, "ebbtide_nats_monitor_up", monitor=server.monitor_url) == 1
            assert value(families, "ebbtide_nats_monitor_up", monitor=silent) == 0
            assert value(families, "ebbtide_stream_bytes", stream="ORDERS") == info.state.bytes > 0
            # Every stream the server holds: the manifest's, its KV buckets', the dead letters'.
            streams = {dict(labels)["stream"] for _, labels in families["ebbtide_stream_bytes"]["samples"]}
            assert {"ORDERS", "DLQ", "KV_outbox-express", "KV_outbox-standard"} <= streams
            server_name = (await asyncio.to_thread(_json, server.monitor_url + "/varz"))["server_name"]
            assert value(families, "ebbtide_jetstream_storage_bytes", server=server_name) >= info.state.bytes
            assert value(families, "ebbtide_jetstream_storage_limit_bytes", server=server_name) > 0
            assert value(families, "ebbtide_jetstream_memory_limit_bytes", server=server_name) > 0
            # The trigger streams' age limit (the reference manifest keeps ORDERS a day), per function.
            age = manifest.spec.streams["ORDERS"].max_age_s
            assert age > 0 and info.config.max_age == age
            for function in manifest.spec.functions:
                assert value(families, "ebbtide_trigger_max_age_seconds", function=function, stream="ORDERS") == age
            assert value(families, "ebbtide_stream_max_age_seconds", stream="ORDERS") == age
            # A limit is reported only where a stream has one.
            limited = {dict(labels)["stream"] for _, labels in families["ebbtide_stream_max_bytes"]["samples"]}
            assert limited == {name for name, s in (await _stream_configs(js)).items() if (s.max_bytes or -1) > 0}

            # The server gone: not ready, and says why; back: ready again.
            server.stop()
            await wait_until(lambda: asyncio.to_thread(lambda: exporter.get("/readyz")[0] == 503), timeout=10)
            assert value(await asyncio.to_thread(exporter.metrics), "ebbtide_nats_monitor_up", monitor=server.monitor_url) == 0
            assert "no NATS monitoring port answered" in exporter.get("/readyz")[1]
            server.start()
            await wait_until(lambda: asyncio.to_thread(lambda: exporter.get("/readyz")[0] == 200), timeout=20)
        finally:
            await nc.close()
    assert exporters[0].stop() == 0, exporters[0].log.read_text()


async def test_a_cluster_is_read_on_every_node_and_each_stream_from_its_leader(tmp_path: Path, exporters: list[Exporter]) -> None:
    path = replicated(manifest_copy(tmp_path)[0])
    manifest = load_manifest(path)
    cluster = Cluster(tmp_path / "cluster").start()
    try:
        nc = await provisioned_cluster(cluster, manifest)
        try:
            js = nc.jetstream()
            for order in generate_orders(30, seed=4):
                await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
            monitors = [node.monitor_url for node in cluster.nodes]
            exporter = await started(exporters, path, monitors, tmp_path)

            async def agrees() -> bool:
                info = await js.stream_info("ORDERS")
                families = await asyncio.to_thread(exporter.metrics)
                servers = {dict(labels)["server"] for _, labels in families["ebbtide_jetstream_storage_bytes"]["samples"]}
                return (
                    len(servers) == 3
                    and value(families, "ebbtide_stream_messages", stream="ORDERS") == info.state.messages == 30
                    and len(families["ebbtide_stream_messages"]["samples"]) == len(await _stream_configs(js))  # once each
                )

            await wait_until(agrees, timeout=20, interval=0.2)
            # The stream's leader stops: its monitor is down, the stream is read from the new leader.
            leader = cluster.by_name((await js.stream_info("ORDERS")).cluster.leader)
            leader.stop()

            async def moved() -> bool:
                families = await asyncio.to_thread(exporter.metrics)
                try:
                    return (
                        value(families, "ebbtide_nats_monitor_up", monitor=leader.monitor_url) == 0
                        and value(families, "ebbtide_stream_messages", stream="ORDERS") == 30
                    )
                except KeyError:
                    return False

            await wait_until(moved, timeout=30, interval=0.2)
            assert exporter.get("/readyz")[0] == 200  # two of three answer
        finally:
            await nc.close()
    finally:
        cluster.stop()
    assert exporters[0].stop() == 0, exporters[0].log.read_text()


def test_bad_monitor_url_is_a_usage_error(tmp_path: Path) -> None:
    path, _ = manifest_copy(tmp_path)
    args = [sys.executable, "-m", "ebbtide", "--manifest", str(path), "nats-exporter", "--monitor-url", "nats:8222"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--monitor-url 'nats:8222'" in done.stderr, done.stderr


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


async def _stream_configs(js) -> dict:  # type: ignore[no-untyped-def]
    return {info.config.name: info.config for info in await js.streams_info()}
