"""One embedded nats-server shared by every implementation of a run: fresh streams, timed bursts, outbox reads.

Times: an order's publish time is this process's clock just before its publish is handed to the client; its
outbox write time is the server's timestamp of the KV message (read back from the KV stream afterwards, so
watching costs the system under test nothing). Both are the same machine's clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import msgspec
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api

from ...broker import ConfirmedPublisher, kv_stream_name, provision, publish_all
from ...broker.partitions import consumer_names
from ...manifest import LoadedManifest
from ...ordering import entry_subject
from ...stream_state import stream_state
from ..orders import INGRESS_SUBJECT, Order, OrderEvent, encode_order, event_msg_id
from .stats import latencies_ms


def _decoded(value: bytes) -> Order | None:
    try:
        return msgspec.json.decode(value, type=Order)
    except msgspec.DecodeError:
        return None


async def stored_orders(nc: NatsClient, manifest: LoadedManifest) -> int:
    """Entries in every KV bucket of the manifest (the outboxes)."""
    return sum([(await stream_state(nc, kv_stream_name(bucket))).messages for bucket in manifest.spec.kv])


@dataclass
class BurstResult:
    sent: int  # publishes confirmed by the server
    publish_errors: int
    stored: int  # distinct orders in the outboxes, written during this run
    writes: int  # outbox writes during this run: more than `stored` means an order was written twice
    mismatched: int  # outbox entries whose value is not the order published (or in the wrong bucket)
    dead_letters: int
    started_at: float  # unix time of the first publish
    publish_s: float  # first to last publish
    wall_s: float  # first publish to the last outbox write (server time of that write)
    latencies_ms: list[float] = field(repr=False)  # per stored order: outbox write minus publish

    @property
    def orders_per_s(self) -> float:
        return self.stored / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def exactly_once(self) -> bool:
        return (
            self.stored == self.sent == self.writes
            and self.mismatched == 0
            and self.dead_letters == 0
            and self.publish_errors == 0
        )


class Harness:
    """The manifest's streams, consumers and buckets on one server, reset between implementations."""

    def __init__(self, nc: NatsClient, manifest: LoadedManifest) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.manifest = manifest
        self.buckets = list(manifest.spec.kv)
        self.consumers = [
            (manifest.stream_for(fn.trigger), consumer)
            for name, fn in manifest.spec.functions.items()
            for consumer in consumer_names(manifest, name)  # an ordered function's partitions too
        ]
        self.publisher = ConfirmedPublisher(nc)

    async def reset(self) -> None:
        """Delete every stream (their consumers go with them) and provision them again, empty."""
        names = [*self.manifest.spec.streams, self.manifest.spec.dead_letter.stream, *map(kv_stream_name, self.buckets)]
        for name in names:
            try:
                await self.js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
        await provision(self.js, self.manifest)
        await self.publisher.start()

    async def lag(self) -> int:
        """Messages waiting or unacked, over every function's consumer (what the scalers read)."""
        total = 0
        for stream, consumer in self.consumers:
            info = await self.js.consumer_info(stream, consumer)
            total += (info.num_pending or 0) + (info.num_ack_pending or 0)
        return total

    async def settle(self, timeout: float = 60.0) -> None:
        """Until every consumer has nothing pending or unacked (the previous run fully finished)."""
        deadline = time.monotonic() + timeout
        while await self.lag() > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumers still hold {await self.lag()} messages after {timeout:g} s")
            await asyncio.sleep(0.02)

    async def last_seqs(self) -> dict[str, int]:
        """The last sequence of each outbox's KV stream and of the dead-letter stream."""
        names = [*map(kv_stream_name, self.buckets), self.manifest.spec.dead_letter.stream]
        return {name: (await self.js.stream_info(name)).state.last_seq for name in names}

    async def counts_since(self, before: dict[str, int]) -> tuple[int, int]:
        """(outbox writes, dead letters) since `before`."""
        now = await self.last_seqs()
        dlq = self.manifest.spec.dead_letter.stream
        writes = sum(now[name] - seq for name, seq in before.items() if name != dlq)
        return writes, now[dlq] - before[dlq]

    async def burst(
        self, orders: Sequence[Order], tag: str, timeout: float = 120.0, on_stored: Callable[[], None] | None = None
    ) -> BurstResult:
        """Publish every order at once (ids made unique by `tag`), wait until all are stored, read the times.

        `orders` may be order events (several per order): then an order's latency is its last event's, and
        an ordered entry subject gets each event's key (ordering.entry_subject). `on_stored`: called as soon
        as every write is seen (before the consumers are read until they settle: e.g. to stop a CPU count)."""
        payloads = [
            (str(o.order_id), encode_order(o), f"{event_msg_id(o) if isinstance(o, OrderEvent) else o.order_guid}:{tag}")
            for o in orders
        ]
        before = await self.last_seqs()
        published: dict[str, float] = {}

        def timed() -> Iterator[tuple[bytes, str]]:
            for key, payload, msg_id in payloads:
                published[key] = time.time()
                yield payload, msg_id

        sending = asyncio.create_task(publish_all(self.publisher, entry_subject(self.manifest, INGRESS_SUBJECT), timed()))
        deadline = time.monotonic() + timeout
        while True:
            writes, dead = await self.counts_since(before)
            if writes + dead >= len(orders) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        if on_stored is not None:
            on_stored()
        sent, errors = await sending
        await self.settle(timeout=max(1.0, deadline - time.monotonic()))
        writes, dead = await self.counts_since(before)
        expected = {str(o.order_id): o for o in orders if not isinstance(o, OrderEvent)}  # an event's value: its last
        written, mismatched = await self.read_writes(before, expected)
        first = min(published.values())
        return BurstResult(
            sent=sent,
            publish_errors=len(errors),
            stored=len(written),
            writes=writes,
            mismatched=mismatched,
            dead_letters=dead,
            started_at=first,
            publish_s=max(published.values()) - first,
            wall_s=max(written.values(), default=first) - first,
            latencies_ms=latencies_ms(published, written),
        )

    async def read_writes(self, before: dict[str, int], expected: dict[str, Order]) -> tuple[dict[str, float], int]:
        """Every outbox entry written after `before`: orderId -> server time of its last write (unix seconds);
        and how many writes are not the `expected` order (by orderId) stored in its delivery's bucket."""
        written: dict[str, float] = {}
        mismatched = 0
        async for msg in self.writes_since(before):
            key = msg.subject.rsplit(".", 1)[1]
            written[key] = msg.metadata.timestamp.timestamp()
            order = expected.get(key)
            if order is not None and (
                msg.subject.split(".")[1] != f"outbox-{order.delivery.lower()}" or _decoded(msg.data) != order
            ):
                mismatched += 1
        return written, mismatched

    async def writes_since(self, before: dict[str, int]) -> AsyncIterator[Msg]:
        """Every outbox write after `before`, bucket by bucket, each in the order it was stored."""
        for bucket in self.buckets:
            stream = kv_stream_name(bucket)
            if (await self.js.stream_info(stream)).state.last_seq <= before[stream]:
                continue
            name = f"bench-read-{time.monotonic_ns()}"
            await self.js.add_consumer(
                stream,
                api.ConsumerConfig(
                    name=name,
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=before[stream] + 1,
                    ack_policy=api.AckPolicy.NONE,
                    mem_storage=True,
                    inactive_threshold=30.0,
                ),
            )
            subscription = await self.js.pull_subscribe_bind(name, stream=stream)
            try:
                while True:
                    try:
                        msgs = await subscription.fetch(2000, timeout=5.0)
                    except (TimeoutError, NatsTimeout):
                        break
                    for msg in msgs:
                        yield msg
                    if msgs[-1].metadata.num_pending == 0:
                        break
            finally:
                await subscription.unsubscribe()
                await self.js.delete_consumer(stream, name)
