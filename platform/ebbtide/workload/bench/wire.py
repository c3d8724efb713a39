"""What an implementation asks of the server, counted on the wire: messages in and out per order.

- `connection_totals`: the server's own count (`/connz`) of messages each client connection sent (in:
  publishes, acks, API requests) and received (out: deliveries, PubAcks, API replies), summed over every
  connection but the benchmark's own. Read over HTTP before and after a timed burst: it costs the
  implementation nothing.
- `WireWatch`: which of those were JetStream API requests (pull requests, lag reads) and acks, seen by a
  subscriber on `$JS.API.>` and `$JS.ACK.>`. The server copies every ack to it, which costs server CPU: so
  it runs in a burst of its own, not in a timed one.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

PULL_REQUEST = "pull requests"
OTHER_API = "other API requests"
ACK = "acks"
NAK = "naks"
IN_PROGRESS = "in-progress"


@dataclass(frozen=True)
class Totals:
    in_msgs: int
    out_msgs: int

    def __sub__(self, other: Totals) -> Totals:
        return Totals(self.in_msgs - other.in_msgs, self.out_msgs - other.out_msgs)


def _connz(monitor_url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{monitor_url}/connz?limit=4096", timeout=10) as response:  # noqa: S310 (our own server)
        data: dict[str, object] = json.load(response)
        return data


async def connection_totals(monitor_url: str, exclude: set[str]) -> Totals:
    """Messages in and out of the server over its client connections, but those named in `exclude`."""
    data = await asyncio.to_thread(_connz, monitor_url)
    in_msgs = out_msgs = 0
    for conn in data.get("connections") or []:  # type: ignore[attr-defined]
        if conn.get("name", "") in exclude:
            continue
        in_msgs += int(conn.get("in_msgs", 0))
        out_msgs += int(conn.get("out_msgs", 0))
    return Totals(in_msgs, out_msgs)


class WireWatch:
    """Counts JetStream API requests and acks while it runs, but the requests of `ignore` (the harness)."""

    def __init__(self, nc: NatsClient, ignore: NatsClient) -> None:
        self._nc = nc
        self._ignore = ignore._resp_sub_prefix.decode() if ignore._resp_sub_prefix else "\0"
        self.counts: Counter[str] = Counter()
        self._subscriptions: list[Subscription] = []

    async def __aenter__(self) -> WireWatch:
        self._subscriptions = [
            await self._nc.subscribe("$JS.API.>", cb=self._api),
            await self._nc.subscribe("$JS.ACK.>", cb=self._ack),
        ]
        await self._nc.flush()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._nc.flush()
        for subscription in self._subscriptions:
            await subscription.unsubscribe()

    async def _api(self, msg: Msg) -> None:
        if msg.reply.startswith(self._ignore):
            return
        self.counts[PULL_REQUEST if msg.subject.startswith("$JS.API.CONSUMER.MSG.NEXT.") else OTHER_API] += 1

    async def _ack(self, msg: Msg) -> None:
        body = msg.data
        if not body or body == b"+ACK" or body.startswith(b"+NXT"):
            self.counts[ACK] += 1
        elif body.startswith(b"-NAK"):
            self.counts[NAK] += 1
        elif body == b"+WPI":
            self.counts[IN_PROGRESS] += 1
        else:
            self.counts[body.split(b" ", 1)[0].decode(errors="replace")] += 1
