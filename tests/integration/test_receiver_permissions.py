"""The receivers' NATS users, as the server enforces them: each may write its own outbox, fetch and ack
its own consumer's messages, dead-letter into its own subject, and nothing of the other receiver's, the
distributor's or the operator's (see broker/authorization.py; the distributor and ingress users are in
test_security.py)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import provision
from ebbtide.broker.access import ServerAccess, embedded_server
from ebbtide.manifest import load_manifest
from ebbtide.status_reports import STATUS_SUBJECT_PREFIX
from tests.conftest import manifest_copy, wait_until

RECEIVERS = {"receiver-express": ("express", "standard"), "receiver-standard": ("standard", "express")}


class Client:
    """A raw nats-py client as one generated user, collecting the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def connect(self, url: str, access: ServerAccess, function: str) -> NatsClient:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error).lower())

        self.nc = await nats.connect(
            url, error_cb=on_error, allow_reconnect=False, **access.for_functions([function]).connect_options()
        )
        return self.nc

    async def refused(self, kind: str, subject: str) -> None:
        """Wait for the server's `Permissions Violation for <kind> to "<subject>"`."""
        expected = f'permissions violation for {kind} to "{subject.lower()}"'
        try:
            await wait_until(lambda: any(expected in error for error in self.errors), timeout=5)
        except AssertionError:
            raise AssertionError(f"the server allowed the {kind} to {subject!r}") from None


@pytest.mark.parametrize("receiver", list(RECEIVERS))
async def test_a_receiver_may_touch_only_its_own_consumer_outbox_and_dead_letters(tmp_path: Path, receiver: str) -> None:
    own, other = RECEIVERS[receiver]
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    with embedded_server(manifest) as (server, access):
        admin = await nats.connect(server.url, **access.admin.connect_options())
        await provision(admin.jetstream(), manifest)
        for delivery in (own, other):
            await admin.jetstream().publish(f"orders.{delivery}", f'{{"to": "{delivery}"}}'.encode())
        client = Client()
        nc = await client.connect(server.url, access, receiver)
        js = nc.jetstream()

        # What it needs works: its own messages, its own outbox, its own dead letters, its status.
        [mine] = await (await js.pull_subscribe(f"orders.{own}", durable=receiver, stream="ORDERS")).fetch(1, timeout=5)
        assert mine.subject == f"orders.{own}"
        await mine.ack_sync()
        assert (await js.publish(f"$KV.outbox-{own}.1", b"stored")).stream == f"KV_outbox-{own}"
        assert (await js.publish(f"dlq.{receiver}", b"dead")).stream == "DLQ"
        await nc.publish(f"{STATUS_SUBJECT_PREFIX}.{receiver}", b"{}")
        await nc.flush()
        assert client.errors == []

        # Everything else is refused by the server, not only by the host.
        other_consumer = f"ORDERS.receiver-{other}"
        forbidden_publishes = [
            f"$KV.outbox-{other}.1",  # the other outbox
            "orders.ingress",
            f"orders.{other}",
            f"orders.{own}",  # feeding the pipeline
            "dlq.distributor",  # another function's dead letters
            f"$JS.API.CONSUMER.MSG.NEXT.{other_consumer}",  # taking the other receiver's messages
            f"$JS.ACK.{other_consumer}.1.2.2.1.0",  # acking them
            "$JS.API.STREAM.DELETE.ORDERS",
            "$JS.API.STREAM.PURGE.DLQ",
            f"$JS.API.CONSUMER.DELETE.ORDERS.{receiver}",
            f"{STATUS_SUBJECT_PREFIX}.distributor",  # speaking for another function
        ]
        for subject in forbidden_publishes:
            await nc.publish(subject, b"{}")
        forbidden_subscriptions = [
            f"_ebbtide_inbox.receiver-{other}.>",
            f"orders.{other}",
            f"$KV.outbox-{other}.>",
            "_INBOX.>",
            "dlq.>",
        ]
        for subject in forbidden_subscriptions:
            await nc.subscribe(subject)
        await nc.flush()
        for subject in forbidden_publishes:
            await client.refused("publish", subject)
        for subject in forbidden_subscriptions:
            await client.refused("subscription", subject)

        # Nothing of it happened.
        ajs = admin.jetstream()
        with pytest.raises(nats.js.errors.NotFoundError):
            await (await ajs.key_value(f"outbox-{other}")).get("1")
        assert (await ajs.consumer_info("ORDERS", f"receiver-{other}")).num_pending == 1
        # Nothing was written to ORDERS (it keeps handled orders for its max_age, so count writes, not messages).
        assert (await ajs.stream_info("ORDERS")).state.last_seq == 2
        await nc.close()
        await admin.close()
