"""A lane's feed that closes (its pool scaled to zero) just as a message comes for its waiting bid. The server
fills the bid even as the feed unsubscribes: before the fix the message went to nobody (unacked until its ack
wait, its hand-back cancelled when it came during close) and the lane stayed pinned to the dead bid until the
pin timeout, so the next holder waited seconds (the ordered soak's trickle: ~10 s in most minutes). Now the
closing feed listens until its requests expire, hands the message back and lets the pin go once its bid has
expired (BID_EXPIRES_S): the next bidder gets it within that, far short of the pin timeout. The race is the
server's; each round gives it a chance, and every round must end the same way."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.jsapi import next_message_subject
from ebbtide.broker.partitions import PRIORITY_GROUP, consumer_names, pin_timeout_s
from tests.conftest import chaos_lane_feed, one_lane_manifest, provision_for
from tests.reliability.conftest import connect_client

ROUNDS = 12


class Bidder:
    """Another process's bid for the lane: a raw pull request without a pin id, its first message."""

    def __init__(self, nc: NatsClient, next_subject: str) -> None:
        self.nc, self.next_subject, self.inbox = nc, next_subject, nc.new_inbox()
        self.first: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def start(self) -> Bidder:
        async def on_message(msg: Msg) -> None:
            if msg.data and not self.first.done():
                self.first.set_result(msg)

        self.subscription = await self.nc.subscribe(self.inbox, cb=on_message)
        return self

    async def bid(self, expires_s: float, wait_s: float) -> Msg:
        body = {"batch": 1, "expires": int(expires_s * 1e9), "group": PRIORITY_GROUP}
        await self.nc.publish(self.next_subject, json.dumps(body).encode(), reply=self.inbox)
        return await asyncio.wait_for(self.first, wait_s)

    async def stop(self) -> None:
        """As a holder that is done: its pin let go (the next round's feed bids for the lane)."""
        await self.subscription.unsubscribe()
        unpin = self.next_subject.replace(".MSG.NEXT.", ".UNPIN.")
        await self.nc.request(unpin, json.dumps({"group": PRIORITY_GROUP}).encode(), timeout=5)


async def test_a_message_for_a_closing_feeds_bid_goes_back_and_the_lane_is_free_at_once(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = one_lane_manifest(tmp_path, ack_wait_s=30)
    await provision_for(manifest, nats_server.url)
    pin_s = pin_timeout_s(manifest.function("chaos"))
    next_subject = next_message_subject("TEST", consumer_names(manifest, "chaos")[0])
    js = nc.jetstream()
    feeds_nc = await connect_client(nats_server.url, "feeds")
    try:
        waits: list[float] = []
        for round_ in range(ROUNDS):
            feed = await chaos_lane_feed(feeds_nc, manifest).start()  # its bids wait at the server
            await feeds_nc.flush()
            # The message and the close race: the bid may take it before, while or after the feed closes.
            await asyncio.gather(js.publish(f"in.chaos.k{round_}", b"x"), feed.close())
            assert not feed.book.held_lanes
            # The next holder: a bid from another client gets the message at once, whoever had it.
            bidder = await Bidder(nc, next_subject).start()
            started = time.monotonic()
            got = await bidder.bid(expires_s=pin_s, wait_s=pin_s / 2)  # before the fix: the pin timeout, or the ack wait
            waits.append(time.monotonic() - started)
            assert got.data == b"x", (round_, got.headers)
            await got.ack()
            await bidder.stop()
    finally:
        await feeds_nc.close()
    print(f"the next bidder waited {min(waits):.3f}-{max(waits):.3f} s (pin timeout {pin_s:g} s)")
