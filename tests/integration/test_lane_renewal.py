"""A holder keeps a request waiting on its lane at all times: its renewal reaches the server before the
request it renews expires. Before the fix a holder's request expired exactly when its renewal was due, and the
renewal went at the next watchdog tick: for up to a tick no request waited, and a message arriving then waited
for the renewal (the ordered soak's trickle, issue 25: now and then an order at 30-120 ms instead of ~12 ms).

The server says how many requests wait on a consumer (`num_waiting`): read every 10 ms through three renewals
of an idle holder, it never counts none (before the fix it did, at renewals), and counts two at once (the
overlap). Its count lags (a request that expired may be counted a while), so two alone proves nothing: none is
the gap. A read of none could also come from this process's event loop stalling longer than the overlap
(RENEW_OVERLAP_S, half a second): the feed would then be late with its renewal, which this test counts as a
failure too."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.lanes import RENEW_AFTER
from ebbtide.broker.partitioned_pull import RENEW_OVERLAP_S
from ebbtide.broker.partitions import consumer_names, pin_timeout_s
from tests.conftest import chaos_lane_feed, one_lane_manifest, provision_for
from tests.reliability.conftest import connect_client


async def test_an_idle_holders_renewal_is_at_the_server_before_its_last_request_expires(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = one_lane_manifest(tmp_path, ack_wait_s=2)
    await provision_for(manifest, nats_server.url)
    pin_s = pin_timeout_s(manifest.function("chaos"))
    lane_consumer = consumer_names(manifest, "chaos")[0]
    feeds_nc = await connect_client(nats_server.url, "feeds")
    feed = await chaos_lane_feed(feeds_nc, manifest).start()
    try:
        await nc.jetstream().publish("in.chaos.k1", b"x")  # the bid takes it: the lane is this feed's
        (msg,) = await feed.fetch(1, wait_s=10)
        await msg.ack()
        await feed.finish([msg])
        assert feed.book.held_lanes == [0]

        # Watch the consumer through three renewals.
        renew_every_s = pin_s * RENEW_AFTER
        waiting: list[int] = []
        overlaps = 0
        deadline = time.monotonic() + 3 * renew_every_s + RENEW_OVERLAP_S
        while time.monotonic() < deadline:
            reply = await nc.request(f"$JS.API.CONSUMER.INFO.TEST.{lane_consumer}", b"", timeout=5)
            count = json.loads(reply.data)["num_waiting"]
            if count == 2 and (not waiting or waiting[-1] != 2):
                overlaps += 1
            waiting.append(count)
            await asyncio.sleep(0.01)
        print(f"num_waiting over {len(waiting)} reads: {sorted(set(waiting))}, {overlaps} overlaps")
        assert 0 not in waiting, waiting
        assert overlaps >= 1, waiting
        assert feed.book.held_lanes == [0]  # renewed, never lost
    finally:
        await feed.close()
        await feeds_nc.close()
