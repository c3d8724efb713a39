"""A hand-optimised nats-py pass-through of the reference pipeline: the practical NATS limit from Python.

No validation and no Wasm: the distributor routes on a byte search for the delivery field, the receivers
take the orderId with a regular expression (a message without one is terminated, with a line on stderr). Otherwise it does what the platform must do for each message,
as cheaply as nats-py allows: batched fetch from the same durable pull consumers, every output published
with `Nats-Msg-Id` (from the input's stream sequence) through a confirmed-publish pipeline (many in flight,
one wildcard reply inbox), and the input acked only after its output was confirmed (nak'ed otherwise).
Several fetch loops per process keep fetch, publish and ack overlapping.

    python -m ebbtide.workload.baselines.raw_pipeline --nats-url URL --role distributor|receiver-express|receiver-standard|all
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys

import nats
import uvloop
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from ...broker import ConfirmedPublisher, PubAck
from . import READY_LINE, ROLES

STREAM = "ORDERS"
TRIGGERS = {"distributor": "orders.ingress", "receiver-express": "orders.express", "receiver-standard": "orders.standard"}
BUCKETS = {"receiver-express": "outbox-express", "receiver-standard": "outbox-standard"}
_EXPRESS = b'"delivery":"Express"'
_ORDER_ID = re.compile(rb'"orderId":(-?\d+)')
IDLE_WAIT_S = 1.0
BUSY_WAIT_S = 0.02


def output_subject(role: str, payload: bytes) -> str:
    """Where the pass-through sends a payload (no validation: anything without an orderId is refused)."""
    if role == "distributor":
        return "orders.express" if _EXPRESS in payload else "orders.standard"
    found = _ORDER_ID.search(payload)
    if found is None:
        raise ValueError("no orderId")
    return f"$KV.{BUCKETS[role]}.{found.group(1).decode()}"


async def work(
    subscription: JetStreamContext.PullSubscription, role: str, batch: int, stop: asyncio.Event, publisher: ConfirmedPublisher
) -> None:
    wait = IDLE_WAIT_S
    while not stop.is_set():
        try:
            msgs: list[Msg] = await subscription.fetch(batch, timeout=wait)
        except (TimeoutError, NatsTimeout):  # nats-py raises either when nothing came
            wait = IDLE_WAIT_S
            continue
        # nats-py's fetch waits for a full batch until its timeout once the first message came: while busy,
        # a short timeout hands over a partial batch at once; idle, a long poll costs nothing.
        wait = BUSY_WAIT_S
        routed: list[Msg] = []
        futures = []
        for msg in msgs:
            try:
                subject = output_subject(role, msg.data)
            except ValueError as exc:  # not an order: said and dropped from the stream, not redelivered forever
                print(f"raw {role}: {exc} in {STREAM} sequence {msg.metadata.sequence.stream}; terminated", file=sys.stderr)
                await msg.term()
                continue
            routed.append(msg)
            futures.append(await publisher.publish(subject, msg.data, f"{STREAM}:{msg.metadata.sequence.stream}:0"))
        for msg, result in zip(routed, await publisher.confirm(futures, timeout=10.0)):
            await (msg.ack() if isinstance(result, PubAck) else msg.nak())


async def main(url: str, roles: list[str], batch: int, loops: int) -> None:
    nc = await nats.connect(url, name="raw-baseline", max_reconnect_attempts=-1)
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    js = nc.jetstream()
    bound = [(role, await js.pull_subscribe_bind(durable=role, stream=STREAM)) for role in roles for _ in range(loops)]
    print(READY_LINE, flush=True)
    await asyncio.gather(*(work(subscription, role, batch, stop, publisher) for role, subscription in bound))
    await nc.flush()  # the last acks are out; drain would wait on the pull subscriptions' inboxes
    await nc.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--role", choices=[*ROLES, "all"], required=True)
    parser.add_argument("--batch", type=int, default=256, help="messages per fetch")
    parser.add_argument("--loops", type=int, default=4, help="concurrent fetch loops per function")
    args = parser.parse_args()
    uvloop.run(main(args.nats_url, list(ROLES) if args.role == "all" else [args.role], args.batch, args.loops))


if __name__ == "__main__":
    cli()
