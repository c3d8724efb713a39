"""Rollouts on the running host, through the CLI, with a real nats-server and real Wasm: shadow runs are
judged and never act, a faulting candidate leaves the live path untouched, a canary acts on its share and
rolls back on faults, promotion loses nothing and survives a restart, and every replica follows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
import wasmtime
from nats.aio.client import Client as NatsClient

from ebbtide.broker import ConfirmedPublisher, EmbeddedNats, free_port, publish_all
from ebbtide.broker.access import embedded_server
from ebbtide.broker.names import ROLLOUTS_BUCKET
from ebbtide.build import build_modules
from ebbtide.cli import main as cli
from ebbtide.host import Host
from ebbtide.launch import running
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.rollout import follow
from ebbtide.rollout.samples import SHADOW_STREAM, decode_sample
from ebbtide.rollout.state import Phase, decode_rollout
from ebbtide.rollout.store import sha256_of
from ebbtide.telemetry import render_metrics
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import (
    BUILD_DIR,
    REPO,
    chaos_manifest,
    exactly_once,
    manifest_copy,
    outbox_bodies,
    outboxes_writes,
    provision_for,
    read_stream,
    wait_until,
)
from tests.integration.test_hot_reload import CHAOS, CHAOS_V2

# A candidate that fails where the live chaos guest publishes: it traps on payloads starting with "m" and
# runs away (its fuel: a timeout) on those starting with "n".
_TRAP_ON_T = "(if (i32.eq (local.get $mode) (i32.const 84)) (then unreachable))"
CHAOS_FAULTY = CHAOS.replace(
    _TRAP_ON_T,
    "(if (i32.eq (local.get $mode) (i32.const 109)) (then unreachable))\n"
    "    (if (i32.eq (local.get $mode) (i32.const 110)) (then (loop $forever (br $forever))))",
)


async def ebbtide(manifest: LoadedManifest, *argv: str) -> int:
    """The CLI, as a user runs it (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(cli, ["-m", str(manifest.path), *argv])


def candidate_file(tmp_path: Path, wat: str, name: str = "candidate") -> Path:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


async def publish(nc: NatsClient, subject: str, messages: list[tuple[bytes, str | None]]) -> None:
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    confirmed, errors = await publish_all(publisher, subject, messages)
    assert (confirmed, errors) == (len(messages), [])


async def record_of(nc: NatsClient, function: str):  # type: ignore[no-untyped-def]
    return decode_rollout((await (await nc.jetstream().key_value(ROLLOUTS_BUCKET)).get(function)).value)


async def dead_letters(nc: NatsClient) -> int:
    return (await nc.jetstream().stream_info("DLQ")).state.messages


def bodies_exactly_once(out: list, expected: list[bytes]) -> list[bytes]:
    bodies = [m.data for m in out]
    assert len(bodies) == len(expected)  # none lost, none twice
    assert sorted(b[1:] for b in bodies) == sorted(e[1:] for e in expected)
    return bodies


async def test_a_faulting_candidate_leaves_the_live_path_untouched(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path, batch=32)
    await provision_for(manifest, nats_server.url)
    faulty = candidate_file(tmp_path, CHAOS_FAULTY)
    url = ["--nats-url", nats_server.url]
    payloads = [f"{'mn'[i % 2]}{i:05d}".encode() for i in range(300)]
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        assert (
            await ebbtide(manifest, "shadow", *url, "start", "--function", "chaos", "--module", str(faulty), "--keep", "4") == 0
        )
        await wait_until(lambda: pool.candidate_sha256 == sha256_of(faulty.read_bytes()))
        await publish(nc, "in.chaos", [(p, f"id-{p.decode()}") for p in payloads])
        await read_stream(nc, "TEST", "test.out", expected=len(payloads))
        await wait_until(lambda: sum(pool.rollout_stats.shadow.values()) == len(payloads))
        stats = pool.stats
        assert (stats.processed, stats.dead_lettered, stats.retried, stats.guest_faults) == (len(payloads), 0, 0, {})
        assert pool.rollout_stats.shadow == {"candidate_fault": len(payloads)}
        metrics = render_metrics(host.snapshot())
        assert f'ebbtide_shadow_total{{function="chaos",result="candidate_fault"}} {len(payloads)}' in metrics
        assert 'ebbtide_shadow_total{function="chaos",result="different"} 0' in metrics
        samples = await read_stream(nc, SHADOW_STREAM, "ebbtide.shadow.chaos.candidate_fault", expected=4)
    bodies_exactly_once(await read_stream(nc, "TEST", "test.out"), payloads)
    assert await dead_letters(nc) == 0
    assert len(samples) == 4  # the first N of the verdict; the stream refused the rest
    kinds = {decode_sample(s.data).candidate.output.split(b":")[0] for s in samples}
    assert kinds <= {b"trap", b"timeout"} and all(decode_sample(s.data).live.status == "ok" for s in samples)


async def test_a_host_that_cannot_write_its_build_folder_keeps_candidates_in_its_scratch_folder(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the image (its /app/build is root's) and on Kubernetes (read-only root filesystem, /tmp an
    emptyDir): build_dir/rollout cannot be made (here a file in its way, which stops root too), so the
    candidate is kept in $TMPDIR's scratch folder and the shadow runs."""
    manifest = chaos_manifest(tmp_path, batch=32)
    (manifest.build_dir / "rollout").write_text("in the way")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    await provision_for(manifest, nats_server.url)
    candidate = candidate_file(tmp_path, CHAOS_V2)
    digest = sha256_of(candidate.read_bytes())
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        argv = ["shadow", "--nats-url", nats_server.url, "start", "--function", "chaos", "--module", str(candidate)]
        assert await ebbtide(manifest, *argv) == 0
        await wait_until(lambda: pool.candidate_sha256 == digest)
    assert (follow.scratch_folder() / f"{digest}.wasm").read_bytes() == candidate.read_bytes()
    assert follow.scratch_folder().is_relative_to(tmp_path / "scratch")


async def test_a_candidate_routing_one_delivery_type_differently_shows_exactly_those_orders(
    tmp_path: Path, reference_manifest: LoadedManifest, nc: NatsClient, nats_server: EmbeddedNats
) -> None:
    # The candidate distributor routes "Drone" where the live one routes "Express": it rejects express orders.
    source = tmp_path / "candidate-src"
    source.mkdir()
    (source / "main.zig").write_text(
        (REPO / "functions/distributor/main.zig").read_text().replace('eqlIgnoreCase("express")', 'eqlIgnoreCase("drone")')
    )
    path, _ = manifest_copy(tmp_path)
    candidate_manifest = tmp_path / "candidate.toml"
    candidate_manifest.write_text(
        path.read_text()
        .replace(f'source = "{REPO / "functions/distributor"}"', f'source = "{source}"')
        .replace(f'build_dir = "{BUILD_DIR}"', f'build_dir = "{tmp_path / "candidate-build"}"')
    )
    (built,) = build_modules(load_manifest(candidate_manifest), ["distributor"])
    manifest = load_manifest(path)
    await provision_for(manifest, nats_server.url)
    orders = generate_orders(400, seed=7)
    express = sum(order.delivery == "Express" for order in orders)
    assert 0 < express < len(orders)
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["distributor"]
        argv = ["shadow", "--nats-url", nats_server.url, "start", "-f", "distributor", "--module", str(built.output)]
        assert await ebbtide(manifest, *argv) == 0
        await wait_until(lambda: pool.candidate_sha256 != "")
        await publish(nc, INGRESS_SUBJECT, [(encode_order(o), o.order_guid) for o in orders])
        await wait_until(lambda: sum(pool.rollout_stats.shadow.values()) == len(orders), timeout=60)
        assert pool.rollout_stats.shadow == {"different": express, "same": len(orders) - express}
        samples = await read_stream(nc, SHADOW_STREAM, "ebbtide.shadow.distributor.different", expected=10)
        for sample in map(decode_sample, (s.data for s in samples)):
            assert sample.live.status == "ok" and sample.candidate.status == "reject"
            assert b'"Express"' in sample.payload
        # The live distributor's effects alone were carried out: every order once in its outbox.
        expected = outbox_bodies(orders)

        async def stored() -> bool:
            return await outboxes_writes(nc, expected) == exactly_once(expected)

        await wait_until(stored, timeout=60)
    assert await dead_letters(nc) == 0


async def test_a_canary_acts_on_its_share_and_is_counted_by_version(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path, batch=256)
    await provision_for(manifest, nats_server.url)
    v2 = candidate_file(tmp_path, CHAOS_V2)
    total = 10_000
    payloads = [f"m{i:05d}".encode() for i in range(total)]
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        argv = ["canary", "--nats-url", nats_server.url, "-f", "chaos", "--module", str(v2), "--share", "10%"]
        assert await ebbtide(manifest, *argv) == 0
        await wait_until(lambda: pool.candidate_sha256 != "")
        await publish(nc, "in.chaos", [(p, f"order-{i}") for i, p in enumerate(payloads)])
        out = await read_stream(nc, "TEST", "test.out", expected=total, timeout=60)
        await wait_until(lambda: pool.stats.processed == total)
        canary = dict(pool.rollout_stats.canary)
        metrics = render_metrics(host.snapshot())
    bodies = bodies_exactly_once(out, payloads)
    by_candidate = sum(b.startswith(b"V") for b in bodies)
    assert abs(by_candidate - total // 10) <= total // 50, by_candidate  # 10 % +- 2 %
    assert canary == {("candidate", "ok"): by_candidate, ("live", "ok"): total - by_candidate}
    assert f'ebbtide_canary_total{{function="chaos",version="candidate",result="ok"}} {by_candidate}' in metrics
    assert f'ebbtide_canary_total{{function="chaos",version="live",result="ok"}} {total - by_candidate}' in metrics


async def test_a_failing_canary_is_rolled_back_and_loses_nothing(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path, batch=64)
    await provision_for(manifest, nats_server.url)
    faulty = candidate_file(tmp_path, CHAOS_FAULTY)
    payloads = [f"m{i:05d}".encode() for i in range(400)]
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        argv = [
            "canary",
            "--nats-url",
            nats_server.url,
            "-f",
            "chaos",
            "--module",
            str(faulty),
            "--share",
            "50%",
            "--window",
            "40",
        ]
        assert await ebbtide(manifest, *argv) == 0
        await wait_until(lambda: pool.candidate_sha256 != "")
        await publish(nc, "in.chaos", [(p, f"id-{i}") for i, p in enumerate(payloads)])
        out = await read_stream(nc, "TEST", "test.out", expected=len(payloads), timeout=60)
        record = await record_of(nc, "chaos")
        assert record.phase is Phase.ROLLED_BACK and "fault rate" in record.why
        assert pool.candidate_sha256 == ""
        faults = pool.rollout_stats.canary[("candidate", "fault")]
        assert 20 <= faults < len(payloads) // 2  # stopped early, then the live module took them
        # Counted once, for the alert EbbtideCanaryRolledBack (deploy/prometheus/alerts.yml).
        assert 'ebbtide_canary_rollbacks_total{function="chaos"} 1\n' in render_metrics(host.snapshot())
        # A rolled-back canary cannot be promoted.
        assert await ebbtide(manifest, "shadow", "--nats-url", nats_server.url, "promote", "chaos") == 1
    bodies_exactly_once(out, payloads)
    assert await dead_letters(nc) == 0


async def test_promotion_during_a_steady_stream_loses_nothing_and_survives_a_restart(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path, batch=8)
    await provision_for(manifest, nats_server.url)
    v2 = candidate_file(tmp_path, CHAOS_V2)
    digest = sha256_of(v2.read_bytes())
    url = ["--nats-url", nats_server.url]
    js = nc.jetstream()
    total = 600
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        manifest_sha = pool.module.sha256
        assert await ebbtide(manifest, "shadow", *url, "start", "-f", "chaos", "--module", str(v2), "--share", "50%") == 0
        await wait_until(lambda: pool.candidate_sha256 == digest)

        async def stream() -> None:
            for i in range(total):
                await js.publish("in.chaos", f"m{i:05d}".encode(), headers={"Nats-Msg-Id": f"s{i}"})
                await asyncio.sleep(0.002)

        publishing = asyncio.create_task(stream())
        await wait_until(lambda: pool.stats.processed >= total // 3)
        promoted_at = pool.stats.processed  # no message before this one can have run on the candidate's behalf
        assert await ebbtide(manifest, "shadow", *url, "promote", "chaos") == 0
        assert pool.module.sha256 == digest  # promote returns once every replica reports it
        assert pool.candidate_sha256 == "" and pool.rollout_stats.shadow["different"] > 0
        await host.reload()  # SIGHUP or `up --watch`: the promoted module stays until an abort
        assert pool.module.sha256 == digest
        await publishing
        out = await read_stream(nc, "TEST", "test.out", expected=total)
    bodies = bodies_exactly_once(out, [f"m{i:05d}".encode() for i in range(total)])
    assert 0 < sum(b.startswith(b"V") for b in bodies) <= total - promoted_at
    assert bodies[-1].startswith(b"V")

    # A restarted host runs the promoted module; abort returns it to the manifest's.
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        assert pool.module.sha256 == digest
        assert await ebbtide(manifest, "shadow", *url, "abort", "chaos") == 0
        await wait_until(lambda: pool.module.sha256 == manifest_sha)


async def test_a_host_without_the_rollouts_bucket_runs_and_follows_once_it_exists(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server provisioned by an older version: the functions run, and rollouts start once provisioned."""
    monkeypatch.setattr(follow, "BUCKET_RETRY_S", 0.2)
    manifest = chaos_manifest(tmp_path)
    await provision_for(manifest, nats_server.url)
    await nc.jetstream().delete_stream("KV_ebbtide-rollouts")
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        await nc.jetstream().publish("in.chaos", b"m1")
        await read_stream(nc, "TEST", "test.out", expected=1)
        await provision_for(manifest, nats_server.url)
        v2 = candidate_file(tmp_path, CHAOS_V2)
        assert await ebbtide(manifest, "shadow", "--nats-url", nats_server.url, "start", "-f", "chaos", "--module", str(v2)) == 0
        await wait_until(lambda: pool.candidate_sha256 == sha256_of(v2.read_bytes()))


async def test_usage_errors(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    manifest = chaos_manifest(tmp_path)
    url = ["--nats-url", nats_server.url]
    not_wasm = tmp_path / "broken.wasm"
    not_wasm.write_bytes(b"\x00asm\x01\x00\x00\x00 not a module")
    assert await ebbtide(manifest, "shadow", *url, "start", "-f", "nope", "--module", str(not_wasm)) == 2
    assert await ebbtide(manifest, "shadow", *url, "start", "-f", "chaos", "--module", str(not_wasm)) == 2
    assert await ebbtide(manifest, "shadow", *url, "start", "-f", "chaos", "--module", str(tmp_path / "absent.wasm")) == 2
    v2 = candidate_file(tmp_path, CHAOS_V2)
    assert await ebbtide(manifest, "canary", *url, "-f", "chaos", "--module", str(v2), "--share", "120%") == 2
    assert await ebbtide(manifest, "canary", *url, "-f", "chaos", "--build", "--share", "5%") == 2  # ships built: no source
    assert await ebbtide(manifest, "shadow", *url, "promote", "nope") == 2


@pytest.mark.timeout(180)
async def test_every_replica_of_per_function_processes_follows_start_and_promote(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    embedded = f"\n[embedded]\nport = {free_port()}\nmonitor_port = {free_port()}\n"
    manifest = chaos_manifest(tmp_path, embedded, batch=16)
    v2 = candidate_file(tmp_path, CHAOS_V2)
    digest = sha256_of(v2.read_bytes())

    async def replicas() -> list[tuple[str, str]]:
        """(module, candidate) of every replica, from `ebbtide shadow status` (their own reports)."""
        capsys.readouterr()
        assert await ebbtide(manifest, "shadow", "status", "chaos") == 0
        lines = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.strip().startswith("replica ")]
        return [(part.split(", candidate ")[0].removeprefix("module "), part.partition(", candidate ")[2]) for part in lines]

    with embedded_server(manifest) as (server, access):  # authentication on: each process as its function's user
        await provision_for(manifest, access.url, access.admin)
        async with running(manifest, access, "per-function"), running(manifest, access, "per-function"):
            admin = await nats.connect(server.url, **access.admin.connect_options())
            await _until(lambda: _count(replicas, lambda r: len(r) == 2))
            assert await ebbtide(manifest, "shadow", "start", "-f", "chaos", "--module", str(v2)) == 0
            await _until(lambda: _count(replicas, lambda r: len(r) == 2 and all(c == digest[:12] for _, c in r)))
            first = [f"m{i:04d}".encode() for i in range(200)]
            await publish(admin, "in.chaos", [(p, f"a{i}") for i, p in enumerate(first)])
            await read_stream(admin, "TEST", "test.out", expected=len(first))
            assert await ebbtide(manifest, "shadow", "promote", "chaos") == 0
            await _until(lambda: _count(replicas, lambda r: len(r) == 2 and all(m == digest[:12] and not c for m, c in r)))
            second = [f"n{i:04d}".encode() for i in range(200)]
            await publish(admin, "in.chaos", [(p, f"b{i}") for i, p in enumerate(second)])
            out = await read_stream(admin, "TEST", "test.out", expected=len(first) + len(second))
            capsys.readouterr()
            assert await ebbtide(manifest, "shadow", "status", "chaos") == 0
            status = capsys.readouterr().out
            await admin.close()
    bodies = [m.data for m in out]
    assert sorted(bodies[len(first) :]) == sorted(b"V" + p[1:] for p in second)  # every replica runs the promoted module
    assert not any(b.startswith(b"V") for b in bodies[: len(first)])  # the shadow never acted
    assert "promoted" in status and f"different {len(first)}" in status, status


async def _count(replicas, accept) -> bool:  # type: ignore[no-untyped-def]
    return bool(accept(await replicas()))


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    await wait_until(predicate, timeout=60, interval=0.5)
