"""Provisioning creates streams, KV buckets, the dead-letter stream and consumers with the manifest's
settings, as the server reports them back (stream_info, consumer_info), and updates them when the
manifest changes."""

from __future__ import annotations

import time
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.js import api

from ebbtide.broker import provision
from ebbtide.manifest import LoadedManifest, parse_manifest
from tests.conftest import wait_until

MANIFEST = """
[streams.ORDERS]
subjects = ["orders.>"]
retention = "workqueue"
storage = "memory"
duplicate_window_s = 45

[streams.AUDIT]
subjects = ["audit.>", "trail.*"]
retention = "interest"
duplicate_window_s = 7.5

[kv.outbox]
storage = "memory"
history = 5

[dead_letter]
stream = "DEAD"
subject_prefix = "dead"
storage = "memory"

[modules.m]
source = "unused"

[functions.f]
module = "m"
trigger = "orders.in"
publish = ["audit.x"]
kv = ["outbox"]
ack_wait_s = 12.5
max_ack_pending = 77
batch = 32
"""


def manifest(tmp_path: Path, text: str = MANIFEST) -> LoadedManifest:
    path = tmp_path / "ebbtide.toml"
    path.write_text(text)
    return parse_manifest(text, path)


async def test_streams_and_consumers_have_the_manifests_settings(tmp_path: Path, nc: NatsClient) -> None:
    js = nc.jetstream()
    await provision(js, manifest(tmp_path))

    orders = (await js.stream_info("ORDERS")).config
    assert (orders.subjects, orders.retention, orders.storage, orders.num_replicas, orders.duplicate_window) == (
        ["orders.>"],
        api.RetentionPolicy.WORK_QUEUE,
        api.StorageType.MEMORY,
        1,
        45.0,
    )
    audit = (await js.stream_info("AUDIT")).config
    assert (audit.subjects, audit.retention, audit.storage, audit.duplicate_window) == (
        ["audit.>", "trail.*"],
        api.RetentionPolicy.INTEREST,
        api.StorageType.FILE,
        7.5,
    )

    dead = (await js.stream_info("DEAD")).config
    assert (dead.subjects, dead.retention, dead.storage, dead.duplicate_window) == (
        ["dead.>"],
        api.RetentionPolicy.LIMITS,
        api.StorageType.MEMORY,
        120.0,
    )

    kv = (await js.stream_info("KV_outbox")).config
    assert (kv.subjects, kv.storage, kv.max_msgs_per_subject, kv.discard) == (
        ["$KV.outbox.>"],
        api.StorageType.MEMORY,
        5,
        api.DiscardPolicy.NEW,
    )
    assert kv.allow_direct and kv.allow_rollup_hdrs and kv.deny_delete
    bucket = await js.key_value("outbox")  # an ordinary KV bucket to any client
    assert (await bucket.status()).history == 5

    consumer = (await js.consumer_info("ORDERS", "f")).config
    assert (consumer.durable_name, consumer.filter_subject, consumer.ack_policy, consumer.deliver_policy) == (
        "f",
        "orders.in",
        api.AckPolicy.EXPLICIT,
        api.DeliverPolicy.ALL,
    )
    assert (consumer.ack_wait, consumer.max_ack_pending) == (12.5, 77)
    # The host counts deliveries and dead-letters; the server must never give up on a message by itself.
    assert consumer.max_deliver == -1


async def test_provisioning_again_updates_what_the_manifest_changed(tmp_path: Path, nc: NatsClient) -> None:
    js = nc.jetstream()
    await provision(js, manifest(tmp_path))
    await js.publish("orders.in", b"kept", headers={"Nats-Msg-Id": "one"})
    changed = (
        MANIFEST.replace("duplicate_window_s = 45", "duplicate_window_s = 90")
        .replace("ack_wait_s = 12.5", "ack_wait_s = 20")
        .replace("max_ack_pending = 77", "max_ack_pending = 99")
    )
    await provision(js, manifest(tmp_path, changed))
    await provision(js, manifest(tmp_path, changed))  # idempotent: a second run changes nothing and does not fail

    info = await js.stream_info("ORDERS")
    assert info.config.duplicate_window == 90.0 and info.state.messages == 1  # updated in place, nothing lost
    consumer = (await js.consumer_info("ORDERS", "f")).config
    assert (consumer.ack_wait, consumer.max_ack_pending) == (20.0, 99)
    assert (await js.publish("orders.in", b"again", headers={"Nats-Msg-Id": "one"})).duplicate  # window still on


async def test_the_duplicate_window_is_the_one_the_server_applies(tmp_path: Path, nc: NatsClient) -> None:
    """Not only stored in the config: a repeated Nats-Msg-Id is dropped within the window and kept after it."""
    js = nc.jetstream()
    await provision(js, manifest(tmp_path, MANIFEST.replace("duplicate_window_s = 45", "duplicate_window_s = 0.5")))
    started = time.monotonic()
    await js.publish("orders.in", b"a", headers={"Nats-Msg-Id": "same"})
    stored_after: list[float] = []

    async def stored_again() -> bool:
        if not (await js.publish("orders.in", b"a", headers={"Nats-Msg-Id": "same"})).duplicate:
            stored_after.append(time.monotonic() - started)
        return bool(stored_after)

    await wait_until(stored_again, timeout=5)  # the default window (120 s) would never let it through
    assert stored_after[0] >= 0.5


async def test_allow_batched_is_provisioned_and_changed_in_place(tmp_path: Path, nc: NatsClient) -> None:
    """On by default for every stream the functions publish to; `false` in the manifest turns it off (and
    back on) on the existing streams, without touching what they store."""
    js = nc.jetstream()
    names = ("ORDERS", "AUDIT", "KV_outbox", "DEAD")
    await provision(js, manifest(tmp_path))
    assert [(await js.stream_info(name)).config.allow_batched for name in names] == [True] * 4
    await js.publish("orders.in", b"kept")
    off = MANIFEST.replace("duplicate_window_s = 45\n", "duplicate_window_s = 45\nallow_batched = false\n").replace(
        "history = 5\n", "history = 5\nallow_batched = false\n"
    )
    await provision(js, manifest(tmp_path, off))
    assert [bool((await js.stream_info(name)).config.allow_batched) for name in names] == [False, True, False, True]
    await provision(js, manifest(tmp_path))
    assert [(await js.stream_info(name)).config.allow_batched for name in names] == [True] * 4
    assert (await js.stream_info("ORDERS")).state.messages == 1
