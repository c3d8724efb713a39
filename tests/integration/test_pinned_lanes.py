"""What nats-server (2.15.1, the one we ship) does with a pinned lane: the facts broker/lanes.py and
broker/partitioned_pull.py rely on, each checked against the real server with raw pull requests.

- only the pinned client's requests get messages, as long as it sends one at least every priority_timeout;
  a request merely waiting does not keep the pin: past the timeout the server pins another client, and the
  old holder's waiting request gets 423;
- after a change of holder the new one gets the newer messages first and the old holder's unacked ones only
  at their ack wait (so pins alone do not keep a key's order);
- num_ack_pending and delivered.consumer_seq are read together, so a holder can count what is pending
  elsewhere; an ack of a message redelivered to another counts (the server acks by stream sequence);
- UNPIN pins the next waiting client at once; a restarted server forgets the pin;
- a request carrying the pin that cannot take a message (max_bytes 1) restarts the pin's timer and is
  answered 409 when a message was there for it, 408 at its expiry; the consumer info names the pin while it
  holds, none once it timed out, and such a request then gets 423 (how a lapsed holder asks);
- a consumer of the earlier layout (max_ack_pending 1, no priority group) becomes a pinned lane in place,
  its pending message kept, and a pull request without a group is then refused.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.delivery import delivery_sequence, parse_ack_subject
from ebbtide.broker.partitions import PRIORITY_GROUP
from tests.reliability.conftest import connect_client

STREAM, CONSUMER = "P", "lane"
PIN_TIMEOUT_S = 1.0
ACK_WAIT_S = 2.0


async def api(nc: NatsClient, subject: str, body: object = None) -> dict:  # type: ignore[type-arg]
    reply = await nc.request(f"$JS.API.{subject}", json.dumps(body).encode() if body is not None else b"", timeout=5)
    answer: dict = json.loads(reply.data)  # type: ignore[type-arg]
    return answer


def lane_config(**overrides: object) -> dict[str, object]:
    return {
        "durable_name": CONSUMER,
        "filter_subject": "p.>",
        "ack_policy": "explicit",
        "ack_wait": int(ACK_WAIT_S * 1e9),
        "max_deliver": -1,
        "max_ack_pending": 1000,
        "priority_groups": [PRIORITY_GROUP],
        "priority_policy": "pinned_client",
        "priority_timeout": int(PIN_TIMEOUT_S * 1e9),
        **overrides,
    }


class Client:
    """One client of the lane: raw pull requests, what came back."""

    def __init__(self, nc: NatsClient, ack: bool = False) -> None:
        self.nc = nc
        self.ack = ack  # ack each message as it comes
        self.inbox = nc.new_inbox()
        self.messages: list[Msg] = []
        self.statuses: list[str] = []
        self.pin: str | None = None
        self.arrived = asyncio.Event()

    async def start(self) -> Client:
        await self.nc.subscribe(self.inbox, cb=self._on_message)
        return self

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is not None:
            self.statuses.append(status)
        else:
            self.pin = (msg.headers or {}).get("Nats-Pin-Id", self.pin)
            self.messages.append(msg)
            if self.ack:
                await msg.ack()
        self.arrived.set()

    async def pull(self, batch: int, expires_s: float, with_pin: bool = True, max_bytes: int = 0) -> None:
        body: dict[str, object] = {"batch": batch, "expires": int(expires_s * 1e9), "group": PRIORITY_GROUP}
        if with_pin and self.pin:
            body["id"] = self.pin
        if max_bytes:
            body["max_bytes"] = max_bytes
        await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}", json.dumps(body).encode(), reply=self.inbox)
        await self.nc.flush()

    def payloads(self) -> list[int]:
        return [int(m.data) for m in self.messages]

    async def until(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) + len(self.statuses) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))


@pytest.fixture
async def two(nats_server: EmbeddedNats, nc: NatsClient) -> AsyncIterator[tuple[Client, Client]]:
    assert "error" not in await api(nc, f"STREAM.CREATE.{STREAM}", {"name": STREAM, "subjects": ["p.>"], "storage": "file"})
    created = await api(nc, f"CONSUMER.CREATE.{STREAM}.{CONSUMER}", {"stream_name": STREAM, "config": lane_config()})
    assert created["config"]["priority_policy"] == "pinned_client", created
    other = await connect_client(nats_server.url, "second-client")
    try:
        yield await Client(nc).start(), await Client(other).start()
    finally:
        await other.close()


async def publish(nc: NatsClient, values: range) -> None:
    js = nc.jetstream()
    for value in values:
        await js.publish(f"p.k{value}", str(value).encode())


async def test_only_the_pinned_client_gets_messages_while_it_keeps_asking(nc: NatsClient, two: tuple[Client, Client]) -> None:
    holder, other = two
    holder.ack = True
    await publish(nc, range(3))
    await holder.pull(3, 0.5)
    await holder.until(3)
    assert holder.payloads() == [0, 1, 2] and holder.pin
    # A request from the holder every third of the pin timeout, each filled at once (none left waiting):
    # the other client's waiting request gets nothing for three pin timeouts, then its 408.
    await other.pull(10, 3 * PIN_TIMEOUT_S, with_pin=False)
    for value in range(3, 12):
        await publish(nc, range(value, value + 1))
        await holder.pull(1, 0.2)
        await asyncio.sleep(PIN_TIMEOUT_S / 3)
    await other.until(1, timeout=5)
    assert other.messages == [] and other.statuses == ["408"]
    assert holder.payloads() == list(range(12))


async def test_a_waiting_request_does_not_keep_the_pin_and_the_new_holder_gets_newer_messages_first(
    nc: NatsClient, two: tuple[Client, Client]
) -> None:
    old, new = two
    await publish(nc, range(5))
    await old.pull(5, 0.5)
    await old.until(5)
    old_pin = old.pin
    await old.pull(10, 5.0)  # waits, but is the holder's last request
    await asyncio.sleep(PIN_TIMEOUT_S + 0.5)
    await new.pull(20, 5.0, with_pin=False)
    started = time.monotonic()
    await publish(nc, range(5, 8))
    await new.until(3)
    assert new.payloads() == [5, 6, 7] and new.pin not in (None, old_pin)  # newer messages first, a new pin
    assert old.statuses == ["423"]  # its waiting request, refused once the server pinned another
    # The old holder's unacked 0-4 come to the new one only at their ack wait.
    await new.until(8)
    assert new.payloads() == [5, 6, 7, 0, 1, 2, 3, 4]
    assert time.monotonic() - started >= ACK_WAIT_S - (PIN_TIMEOUT_S + 0.5) - 0.2
    assert all(parse_ack_subject(m.reply).delivered == 2 for m in new.messages[3:])
    # A request carrying the old pin is refused at once.
    await old.pull(1, 1.0)
    await old.until(5 + 2)  # its 5 messages and 2 statuses (counting from 2 did not wait: a race)
    assert old.statuses == ["423", "423"]


async def test_the_count_a_new_holder_waits_for_and_an_ack_from_behind_its_back(
    nc: NatsClient, two: tuple[Client, Client]
) -> None:
    old, new = two
    await publish(nc, range(4))
    await old.pull(2, 0.5)
    await old.until(2)
    await asyncio.sleep(PIN_TIMEOUT_S + 0.3)
    await new.pull(2, 1.0, with_pin=False)
    await new.until(2)
    assert new.payloads() == [2, 3]
    info = await api(nc, f"CONSUMER.INFO.{STREAM}.{CONSUMER}")
    # Four pending: two with the old holder, two with the new, whose deliveries the count includes.
    assert info["num_ack_pending"] == 4
    assert max(delivery_sequence(m.reply) for m in new.messages) <= info["delivered"]["consumer_seq"]
    # The old holder acks; the count drops to what the new one holds.
    for msg in old.messages:
        await nc.request(msg.reply, b"+ACK", timeout=2)
    assert (await api(nc, f"CONSUMER.INFO.{STREAM}.{CONSUMER}"))["num_ack_pending"] == 2
    # An ack goes by stream sequence: a message redelivered to the new holder is acked by the old one's reply.
    await publish(nc, range(4, 5))
    await old.pull(1, 0.5, with_pin=False)  # not pinned: it gets nothing
    await new.pull(1, 1.0)
    await new.until(3)
    assert new.payloads()[-1] == 4


async def test_a_request_that_cannot_take_a_message_says_whether_the_pin_is_still_its_own(
    nc: NatsClient, two: tuple[Client, Client]
) -> None:
    holder, other = two
    await publish(nc, range(2))
    await holder.pull(1, 0.5)
    await holder.until(1)
    pinned_at, pin = time.monotonic(), holder.pin
    await holder.pull(1, 0.3, max_bytes=1)  # message 1 is there for it, too large: 409, not delivered
    await holder.until(2)
    assert holder.statuses[-1].startswith("409") and holder.payloads() == [0]
    # Renewed by such requests alone, the pin outlasts its timeout: the other client's bid gets nothing.
    await asyncio.sleep(PIN_TIMEOUT_S * 0.6)
    await holder.pull(1, 0.3, max_bytes=1)
    await holder.until(3)
    await other.pull(5, PIN_TIMEOUT_S * 0.5, with_pin=False)
    await other.until(1)
    assert other.statuses == ["408"] and time.monotonic() - pinned_at > PIN_TIMEOUT_S
    groups = (await api(nc, f"CONSUMER.INFO.{STREAM}.{CONSUMER}"))["priority_groups"]
    assert groups == [{"group": PRIORITY_GROUP, "pinned_client_id": pin, "pinned_ts": groups[0]["pinned_ts"]}]
    await nc.request(holder.messages[0].reply, b"+ACK", timeout=2)
    # Nothing there for it: it waits until it expires, 408 (the consumer info then says whose the pin is).
    await publish(nc, range(2, 3))
    await holder.pull(2, 0.5)  # takes 1 and 2
    await holder.until(5)
    for msg in holder.messages[1:]:
        await nc.request(msg.reply, b"+ACK", timeout=2)
    await holder.pull(1, 0.2, max_bytes=1)
    await holder.until(6)
    assert holder.statuses[-1] == "408"
    # Its pin timed out: the info names none, and with a message there such a request gets 423.
    await asyncio.sleep(PIN_TIMEOUT_S + 0.3)
    assert "pinned_client_id" not in (await api(nc, f"CONSUMER.INFO.{STREAM}.{CONSUMER}"))["priority_groups"][0]
    await publish(nc, range(3, 4))
    await holder.pull(1, 0.5, max_bytes=1)
    await holder.until(7)
    assert holder.statuses[-1] == "423"


async def test_unpin_pins_the_next_client_at_once(nc: NatsClient, two: tuple[Client, Client]) -> None:
    holder, other = two
    await publish(nc, range(2))
    await holder.pull(1, 0.5)
    await holder.until(1)
    await nc.request(holder.messages[0].reply, b"+ACK", timeout=2)
    await other.pull(5, 5.0, with_pin=False)
    started = time.monotonic()
    answer = await api(nc, f"CONSUMER.UNPIN.{STREAM}.{CONSUMER}", {"group": PRIORITY_GROUP})
    assert "error" not in answer, answer
    await other.until(1)
    assert other.payloads() == [1] and other.pin != holder.pin
    assert time.monotonic() - started < PIN_TIMEOUT_S / 2  # not after the pin timeout


async def test_a_restarted_server_forgets_the_pin(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0).start()
    nc = await connect_client(server.url)
    try:
        await api(nc, f"STREAM.CREATE.{STREAM}", {"name": STREAM, "subjects": ["p.>"], "storage": "file"})
        config = lane_config(priority_timeout=int(60e9))
        await api(nc, f"CONSUMER.CREATE.{STREAM}.{CONSUMER}", {"stream_name": STREAM, "config": config})
        holder = await Client(nc).start()
        await publish(nc, range(1))
        await holder.pull(1, 0.5)
        await holder.until(1)
        pin = holder.pin
        server.kill()
        server.start()
        for _ in range(100):  # until JetStream has recovered the stream
            try:
                await publish(nc, range(1, 2))
                break
            except Exception:
                await asyncio.sleep(0.1)
        await holder.pull(1, 2.0)  # the old pin, which the restarted server no longer has
        await holder.until(2)
        assert holder.statuses == ["423"]
        await holder.pull(2, 3.0, with_pin=False)
        await holder.until(4)
        # Pinned anew; its unacked message is still pending (the consumer's state survived) and comes first.
        assert holder.payloads() == [0, 0, 1] and holder.pin != pin
    finally:
        await nc.close()
        server.stop()


async def test_a_consumer_of_the_earlier_layout_becomes_a_pinned_lane_in_place(nc: NatsClient) -> None:
    await api(nc, f"STREAM.CREATE.{STREAM}", {"name": STREAM, "subjects": ["p.>"], "storage": "file"})
    earlier = {k: v for k, v in lane_config(max_ack_pending=1).items() if not k.startswith("priority")}
    await api(nc, f"CONSUMER.CREATE.{STREAM}.{CONSUMER}", {"stream_name": STREAM, "config": earlier})
    await publish(nc, range(2))
    js = nc.jetstream()
    old = await js.pull_subscribe_bind(CONSUMER, stream=STREAM)
    (pending,) = await old.fetch(1, timeout=2)  # held by a host of the earlier version
    upgraded = await api(nc, f"CONSUMER.CREATE.{STREAM}.{CONSUMER}", {"stream_name": STREAM, "config": lane_config()})
    assert "error" not in upgraded and upgraded["config"]["priority_policy"] == "pinned_client", upgraded
    info = await api(nc, f"CONSUMER.INFO.{STREAM}.{CONSUMER}")
    assert info["num_ack_pending"] == 1 and info["delivered"]["stream_seq"] == 1  # its state kept
    # The earlier host's requests (no group) are refused from now on: it takes nothing more.
    refused = await nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}", json.dumps({"batch": 1}).encode(), timeout=2)
    assert refused.headers and refused.headers.get("Status") == "400"
    holder = await Client(nc).start()
    await holder.pull(5, 1.0)
    await holder.until(1)
    assert holder.payloads() == [1] and holder.pin
    await pending.ack()
