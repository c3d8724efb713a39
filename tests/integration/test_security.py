"""Security against real servers and real guests: authentication, least privilege enforced by the server,
sandboxed and verified guests, input limits."""

from __future__ import annotations

import hashlib
import stat
import struct
import time
from pathlib import Path

import nats
import pytest
import wasmtime

from ebbtide.broker import EmbeddedNats, connect
from ebbtide.broker.access import ServerAccess, embedded_server
from ebbtide.broker.headers import H_ERROR, H_REASON
from ebbtide.cli import main as cli
from ebbtide.errors import NatsConnectionError
from ebbtide.host import Host
from ebbtide.launch import running
from ebbtide.manifest import LoadedManifest, load_manifest, parse_manifest
from ebbtide.runtime import ModuleLoadError
from ebbtide.status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX, decode_status
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import GUESTS, chaos_manifest, manifest_copy, provision_for, read_stream, wait_for_consumers, wait_until
from tests.integration.test_pipeline import outbox_counts


async def _client(server: EmbeddedNats, access: ServerAccess, functions: list[str] | None = None):  # type: ignore[no-untyped-def]
    """A raw nats-py client with the given user's credentials, collecting the server's async errors."""
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    auth = access.for_functions(functions) if functions else access.admin
    nc = await nats.connect(server.url, error_cb=on_error, **auth.connect_options())
    return nc, errors


async def test_authentication_and_least_privilege_are_enforced_by_the_server(
    reference_manifest: LoadedManifest, tmp_path: Path
) -> None:
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    orders = generate_orders(30, seed=21)
    with embedded_server(manifest) as (server, access):
        assert access.bundle is not None
        for secret in (access.bundle.seed_file("admin"), access.bundle.seed_file("distributor"), access.bundle.server_config):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        config = access.bundle.server_config.read_text()
        assert access.bundle.seed_file("admin").read_text().strip() not in config  # public keys only, never a seed

        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        with pytest.raises(NatsConnectionError, match="refused the credentials"):
            await connect(server.url, "stranger", give_up_after_s=5)

        # The pipeline works with one least-privilege user per function process ...
        await provision_for(manifest, access.url, access.admin)
        async with running(manifest, access, "per-function"):
            admin, _ = await _client(server, access)
            await wait_for_consumers(admin)  # each function process provisioned with its own user
            ingress = await nats.connect(server.url, **access.bundle.ingress().connect_options())
            for order in orders:
                await ingress.jetstream().publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})

            async def stored() -> bool:
                return sum((await outbox_counts(admin)).values()) == len(orders)

            await wait_until(stored, timeout=60)

            # Scaling to zero and back needs nothing more of these users: every pool drains to zero
            # instances (their status reports, read as the read-only observer), then new orders wake them.
            observer = await nats.connect(server.url, **access.for_reading().connect_options())
            idle: dict[str, bool] = {}

            async def on_status(msg) -> None:  # type: ignore[no-untyped-def]
                status = decode_status(msg.data)
                idle[status.function] = status.instances == 0 and status.in_flight == 0

            await observer.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=on_status)
            await observer.publish(STATUS_REQUEST_SUBJECT, b"")
            await wait_until(lambda: set(idle) == set(manifest.spec.functions) and all(idle.values()), timeout=60)
            later = generate_orders(10, seed=22, first_id=10_000)
            for order in later:
                await ingress.jetstream().publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
            orders += later
            await wait_until(stored, timeout=60)
            await observer.close()

            # ... and the server, not only the host, keeps each user to its own subjects.
            distributor, errors = await _client(server, access, ["distributor"])
            with pytest.raises(nats.errors.TimeoutError):  # dropped by the server: no ack ever comes
                await distributor.jetstream().publish("$KV.outbox-express.999999", b"forged", timeout=1)
            await distributor.subscribe("_ebbtide_inbox.receiver-express.>")  # another function's replies
            await distributor.subscribe(INGRESS_SUBJECT.replace("ingress", "express"))  # not its trigger
            await distributor.flush()
            ingress_errors: list[str] = []

            async def on_ingress_error(error: Exception) -> None:
                ingress_errors.append(str(error))

            await ingress.close()
            ingress = await nats.connect(server.url, error_cb=on_ingress_error, **access.bundle.ingress().connect_options())
            with pytest.raises(nats.errors.TimeoutError):
                await ingress.jetstream().publish("orders.express", b"{}", timeout=1)  # past the distributor
            await wait_until(lambda: len(errors) >= 3 and ingress_errors)
            assert any('publish to "$kv.outbox-express.999999"' in e for e in errors), errors
            assert any('subscription to "_ebbtide_inbox.receiver-express.>"' in e for e in errors), errors
            assert any('subscription to "orders.express"' in e for e in errors), errors
            assert any('publish to "orders.express"' in e for e in ingress_errors), ingress_errors
            with pytest.raises(nats.js.errors.NotFoundError):
                await (await admin.jetstream().key_value("outbox-express")).get("999999")
            for client in (ingress, distributor, admin):
                await client.close()


def test_nats_config_writes_users_for_an_external_server(
    reference_manifest: LoadedManifest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "auth"
    assert cli(["--manifest", str(reference_manifest.path), "nats-config", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    config = (out / "server.conf").read_text()
    for user in ("admin", "observer", "distributor", "receiver-express", "receiver-standard"):
        assert (out / f"{user}.nk").read_text().startswith("SU")  # a user seed
        assert str(out / f"{user}.nk") in printed
    assert "ingress" in config and "orders.ingress" in config
    password = dict(line.split("=", 1) for line in (out / "ingress.env").read_text().splitlines())["EBBTIDE_NATS_PASSWORD"]
    assert password not in printed  # secrets stay in their files
    seeds = {user: (out / f"{user}.nk").read_text() for user in ("admin", "distributor")}
    assert cli(["--manifest", str(reference_manifest.path), "nats-config", "--out", str(out)]) == 0
    assert {user: (out / f"{user}.nk").read_text() for user in seeds} == seeds  # kept: running clients stay valid


async def test_a_tampered_module_is_refused(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    manifest = chaos_manifest(tmp_path)
    wasm = manifest.module_path("chaos")
    digest = hashlib.sha256(wasm.read_bytes()).hexdigest()
    pinned = parse_manifest(manifest.path.read_text() + f'sha256 = "{digest}"\n', manifest.path)
    await provision_for(pinned, nats_server.url)
    async with Host(pinned, nats_server.url) as host:
        assert host.pools["chaos"].module.sha256 == digest
    tampered = bytearray(wasm.read_bytes())
    tampered[-1] ^= 0xFF  # one bit pattern in a data segment: still valid Wasm, another module
    wasm.write_bytes(bytes(tampered))
    with pytest.raises(ModuleLoadError, match=f"the manifest expects {digest}; refusing"):
        async with Host(pinned, nats_server.url):
            pass


def _wasi_manifest(tmp_path: Path, grants: str) -> LoadedManifest:
    manifest = chaos_manifest(tmp_path)
    (manifest.build_dir / "wasm" / "wasi_clock.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / "wasi_clock.wat").read_text()))
    text = manifest.path.read_text().replace('module = "chaos"', 'module = "wasi_clock"') + grants
    return parse_manifest(text + '\n[modules.wasi_clock]\nsource = "unused"\n', manifest.path)


async def test_wasi_is_denied_by_default_and_granted_by_the_manifest(tmp_path: Path, nats_server: EmbeddedNats, nc) -> None:  # type: ignore[no-untyped-def]
    await provision_for(_wasi_manifest(tmp_path, ""), nats_server.url)  # the same stream and consumer for all three
    with pytest.raises(ModuleLoadError, match="clock_time_get \\(needs the 'clock' grant\\).*granted nothing"):
        async with Host(_wasi_manifest(tmp_path, ""), nats_server.url):
            pass
    with pytest.raises(ModuleLoadError, match="random_get \\(needs the 'random' grant\\)"):
        async with Host(_wasi_manifest(tmp_path, 'wasi = ["clock"]\n'), nats_server.url):
            pass
    async with Host(_wasi_manifest(tmp_path, 'wasi = ["clock", "random"]\n'), nats_server.url):
        before = time.time_ns()
        await nc.jetstream().publish("in.chaos", b"what time is it")
        out = await read_stream(nc, "TEST", "test.out", expected=1)
    clock, random = struct.unpack("<Q", out[0].data[:8])[0], out[0].data[8:]
    assert before - 5_000_000_000 < clock < time.time_ns() and len(random) == 8


async def test_effect_and_header_limits_dead_letter_the_message(tmp_path: Path, nats_server: EmbeddedNats, nc) -> None:  # type: ignore[no-untyped-def]
    manifest = chaos_manifest(tmp_path)
    text = manifest.path.read_text().replace(
        "max_payload = 4096 }", "max_payload = 4096, max_effect_bytes = 8, max_header_bytes = 300 }"
    )
    limited = parse_manifest(text, manifest.path)
    js = nc.jetstream()
    await provision_for(limited, nats_server.url)
    async with Host(limited, nats_server.url) as host:
        await js.publish("in.chaos", b"small")
        await js.publish("in.chaos", b"larger than eight bytes")
        await js.publish("in.chaos", b"tiny", headers={"X-Padding": "p" * 400})
        dead = await read_stream(nc, "DLQ", "dlq.chaos", expected=2)
        out = await read_stream(nc, "TEST", "test.out", expected=1)
        assert host.pools["chaos"].stats.refused == 1
    assert [m.data for m in out] == [b"small"]
    reasons = {m.data: (m.headers[H_REASON], m.headers[H_ERROR]) for m in dead}
    assert reasons[b"larger than eight bytes"] == ("effect-refused", "an effect of 23 bytes; limits.max_effect_bytes is 8")
    assert reasons[b"tiny"][0] == "headers-too-large" and "limits.max_header_bytes (300)" in reasons[b"tiny"][1]
