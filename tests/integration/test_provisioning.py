"""Provisioning is an admin step of its own: `ebbtide provision` creates what the manifest needs, and a host
(whose user may not create anything) waits for it, saying why on /readyz and once in its log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import nats
import pytest
from nats.js import api

from ebbtide.broker import EmbeddedNats, free_port
from ebbtide.broker.users import AuthBundle, write_bundle
from ebbtide.host import Host
from ebbtide.manifest import load_manifest
from tests.conftest import manifest_copy, provision_for, wait_until
from tests.integration.test_metrics_health import get


def api_requests(server: EmbeddedNats) -> int:
    """JetStream API requests the server has answered so far (its /jsz monitoring endpoint)."""
    with urllib.request.urlopen(f"{server.monitor_url}/jsz", timeout=5) as reply:
        return int(json.loads(reply.read())["api"]["total"])


@pytest.fixture
def secured(tmp_path: Path, reference_manifest) -> tuple[Path, AuthBundle, EmbeddedNats]:  # type: ignore[no-untyped-def]
    path, _ = manifest_copy(tmp_path)
    bundle = write_bundle(load_manifest(path), tmp_path / "auth")
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, config_file=bundle.server_config) as server:
        yield path, bundle, server


async def test_a_host_waits_for_provisioning_and_says_why(
    secured: tuple[Path, AuthBundle, EmbeddedNats],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, bundle, server = secured
    manifest = load_manifest(path)
    monkeypatch.setattr("ebbtide.host.PROVISIONING_POLL_S", 0.01)
    monkeypatch.setattr("ebbtide.host.PROVISIONING_QUIET_S", 0.0)  # said as a warning at once (`up` waits 3 s)
    caplog.set_level(logging.INFO, logger="ebbtide.host")
    host = Host(manifest, server.url, ["distributor"], metrics_port=free_port(), auth=bundle.function("distributor"))
    starting = asyncio.create_task(host.start())
    admin = await nats.connect(server.url, **bundle.admin().connect_options())
    try:

        async def not_ready_because(missing: str) -> bool:
            if host.telemetry is None:
                return False
            status, _, body = await get(host.telemetry.port, "/readyz")
            return status == 503 and missing in body.decode()

        # Nothing there: it waits for the stream, polling many times but saying so once.
        await wait_until(lambda: not_ready_because("stream ORDERS does not exist: run `ebbtide provision`"))
        requests = api_requests(server)
        await wait_until(lambda: asyncio.to_thread(lambda: api_requests(server) >= requests + 20))
        assert await admin.jetstream().streams_info() == [], "the host created nothing"
        # The stream, but not its consumer yet: a new reason, said once more.
        await admin.jetstream().add_stream(name="ORDERS", subjects=["orders.>"], max_age=86400)
        await wait_until(lambda: not_ready_because("durable consumer distributor on stream ORDERS does not exist"))
        requests = api_requests(server)
        await wait_until(lambda: asyncio.to_thread(lambda: api_requests(server) >= requests + 20))
        assert not starting.done() and await admin.jetstream().consumers_info("ORDERS") == []
        waiting = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(waiting) == 2 and "stream ORDERS" in waiting[0] and "durable consumer" in waiting[1], waiting

        await provision_for(manifest, server.url, bundle.admin())  # the admin step: the host starts
        await asyncio.wait_for(starting, 30)
        assert host.telemetry is not None
        assert (await get(host.telemetry.port, "/readyz"))[::2] == (200, b"ok\n")
        assert any("function distributor: provisioned, starting" in r.getMessage() for r in caplog.records)
    finally:
        if not starting.done():
            starting.cancel()
        await host.stop()
        await admin.drain()


def ebbtide(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ebbtide", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_")} | env,
    )


async def test_provision_command_creates_everything_as_admin_only(secured: tuple[Path, AuthBundle, EmbeddedNats]) -> None:
    path, bundle, server = secured
    manifest = load_manifest(path)
    as_distributor = {
        "EBBTIDE_NATS_NKEY_SEED_FILE": str(bundle.seed_file("distributor")),
        "EBBTIDE_NATS_INBOX_PREFIX": bundle.function("distributor").inbox_prefix,
    }
    refused = ebbtide("-m", str(path), "provision", "--nats-url", server.url, env=as_distributor)
    assert refused.returncode == 1, refused.stderr
    assert "provisioning needs the admin credentials" in refused.stderr
    assert "Traceback" not in refused.stderr

    as_admin = {"EBBTIDE_NATS_NKEY_SEED_FILE": str(bundle.seed_file("admin"))}
    for _ in range(2):  # idempotent
        done = ebbtide("-m", str(path), "provision", "--nats-url", server.url, env=as_admin)
        assert done.returncode == 0, done.stderr
        assert f"provisioned on {server.url}" in done.stdout
    admin = await nats.connect(server.url, **bundle.admin().connect_options())
    try:
        js = admin.jetstream()
        assert sorted(i.config.name for i in await js.streams_info()) == [
            "DLQ",
            "KV_ebbtide-rollouts",  # rollouts: records, candidates' bytes, shadow samples
            "KV_outbox-express",
            "KV_outbox-standard",
            "OBJ_ebbtide-modules",
            "ORDERS",
            "SHADOW",
        ]
        assert sorted(c.name for c in await js.consumers_info("ORDERS")) == sorted(manifest.spec.functions)
    finally:
        await admin.drain()


async def test_provisioned_stream_keeps_acked_messages_and_refuses_a_workqueue_in_place(
    tmp_path: Path,
    reference_manifest,
    nats_server: EmbeddedNats,  # type: ignore[no-untyped-def]
) -> None:
    """The manifest's max_age_s reaches the server; a stream still provisioned as a work queue (before limits
    retention was the default) cannot be changed in place, and provisioning says what to do instead."""
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    await provision_for(manifest, nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        config = (await js.stream_info("ORDERS")).config
        assert (config.retention, config.max_age, config.duplicate_window) == (api.RetentionPolicy.LIMITS, 86400, 120)
        await js.delete_stream("ORDERS")
        await js.add_stream(api.StreamConfig(name="ORDERS", subjects=["orders.>"], retention=api.RetentionPolicy.WORK_QUEUE))
        refused = ebbtide("-m", str(path), "provision", "--nats-url", nats_server.url, env={})
        assert refused.returncode == 1, refused.stderr
        assert (
            "stream ORDERS has retention workqueue on the server and limits in the manifest (streams.ORDERS.retention)"
            in refused.stderr
        )
        assert "nats stream rm ORDERS" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        await nc.drain()
