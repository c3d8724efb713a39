"""`ebbtide publish` as a shell user runs it (issue 27): it says how many messages the stream stored and how
many it dropped as duplicates, refuses a subject no function reads (a typo) unless --force, and keeps
publishing orders to orders.ingress after `ebbtide new` added an entry subject of its own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.manifest import load_manifest
from ebbtide.scaffold import new_function
from tests.conftest import manifest_copy, provision_for

ORDER = (
    '{"orderId": 1, "orderGuid": "3f6c2d1e-8a4b-4f0e-9c7d-5b2a1e0f9d34", "description": "Lab order", "firstName": "Ada", '
    '"lastName": "Lovelace", "delivery": "Express", "items": [{"orderItemId": 1, "sku": "LENS-10001", "quantity": 3}]}\n'
)


async def publish(manifest: Path, server: EmbeddedNats, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ebbtide", "-m", str(manifest), "publish", "--nats-url", server.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def stored(nc: NatsClient, subject: str | None = None) -> int:
    info = await nc.jetstream().stream_info("ORDERS", subjects_filter=subject)
    return info.state.messages if subject is None else sum((info.state.subjects or {}).values())


async def test_publish_says_what_was_stored_and_what_was_dropped_as_a_duplicate(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest, _ = manifest_copy(tmp_path)
    await provision_for(load_manifest(manifest), nats_server.url)
    done = await publish(manifest, nats_server, "--count", "1000")
    assert done.returncode == 0, done.stderr
    assert ": 1000 stored, 0 dropped as duplicates" in done.stdout, done.stdout
    # The next 2,000 orders: other order ids, so other ids (orderGuid, the Nats-Msg-Id), all stored.
    done = await publish(manifest, nats_server, "--count", "2000", "--first-id", "1001")
    assert done.returncode == 0, done.stderr
    assert "published 2000 message(s) to orders.ingress" in done.stdout
    assert ": 2000 stored, 0 dropped as duplicates" in done.stdout, done.stdout
    assert await stored(nc) == 3000
    # The same orders again within the duplicate window: confirmed, and said to be dropped.
    done = await publish(manifest, nats_server, "--count", "10", "--first-id", "500")
    assert done.returncode == 0, done.stderr
    assert ": 0 stored, 10 dropped as duplicates (their Nats-Msg-Id was stored before" in done.stdout, done.stdout
    assert await stored(nc) == 3000


async def test_a_subject_no_function_reads_is_refused_unless_forced(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest, _ = manifest_copy(tmp_path)
    await provision_for(load_manifest(manifest), nats_server.url)
    typo = await publish(manifest, nats_server, "--count", "3", "--subject", "orders.ingres")
    assert typo.returncode == 2, typo.stdout + typo.stderr
    assert "no function of" in typo.stderr and "reads 'orders.ingres'" in typo.stderr, typo.stderr
    assert "orders.ingress, orders.express, orders.standard" in typo.stderr  # the triggers it could have meant
    assert await stored(nc) == 0  # ORDERS captures orders.>: it would have stored them, for no one
    forced = await publish(manifest, nats_server, "--count", "3", "--subject", "orders.ingres", "--force")
    assert forced.returncode == 0, forced.stderr
    assert await stored(nc, "orders.ingres") == 3
    # Another function's trigger is read by that function: published without --force.
    express = await publish(manifest, nats_server, "--count", "2", "--subject", "orders.express")
    assert express.returncode == 0, express.stderr


async def test_publish_still_sends_orders_to_orders_ingress_after_new(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """Before, a function added by `ebbtide new` (its trigger a second entry subject) made the README's
    `ebbtide publish --file order.jsonl` exit 2 ("2 entry subjects ...; choose one with --subject")."""
    manifest, _ = manifest_copy(tmp_path)
    made = new_function(load_manifest(manifest), "quota", "python")
    await provision_for(load_manifest(manifest), nats_server.url)
    (tmp_path / "order.jsonl").write_text(ORDER)
    done = await publish(manifest, nats_server, "--file", str(tmp_path / "order.jsonl"))
    assert done.returncode == 0, done.stderr
    assert "published 1 message(s) to orders.ingress" in done.stdout
    assert await stored(nc, "orders.ingress") == 1
    done = await publish(manifest, nats_server, "--file", str(tmp_path / "order.jsonl"), "--subject", "quota.in")
    assert done.returncode == 0, done.stderr
    info = await nc.jetstream().stream_info("quota")
    assert info.state.messages == 1
    # and `new` said so when it added the function
    assert any("--subject quota.in publishes to quota" in note for note in made.notes), made.notes
