"""A hand-optimised nats-py pass-through of the reference pipeline: the practical NATS limit from Python.

No validation and no Wasm: the distributor routes on a byte search for the delivery field, the receivers
take the orderId with a regular expression (a message without one is terminated, with a line on stderr).
Otherwise it does what the platform must do for each message, as cheaply as nats-py's public API allows:
batched fetch from the same durable pull consumers, every output published with `Nats-Msg-Id` (from the
input's stream sequence), many in flight, and the input acked only after its output was confirmed (nak'ed
otherwise). Several fetch loops per process keep fetch, publish and ack overlapping.

Two ways to have the outputs confirmed, both written by hand with nats-py:
- default: a PubAck per publish (a reply subject each under one wildcard inbox, a future each), the way
  a user writes it;
- `--fast-batches`: the same server features as ebbtide's host (ADR-50 fast ingest, on streams that allow
  it): a fetched batch's outputs are one batch, committed by its last publish, confirmed by one PubAck
  whose `count` says how many are stored; so the bench shows what is the server's and what is ebbtide's.

    python -m ebbtide.workload.baselines.raw_pipeline --nats-url URL --role distributor|receiver-express|receiver-standard|all [--fast-batches]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import signal
import sys

import msgspec
import nats
import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from . import READY_LINE, ROLES

STREAM = "ORDERS"
TRIGGERS = {"distributor": "orders.ingress", "receiver-express": "orders.express", "receiver-standard": "orders.standard"}
BUCKETS = {"receiver-express": "outbox-express", "receiver-standard": "outbox-standard"}
_EXPRESS = b'"delivery":"Express"'
_ORDER_ID = re.compile(rb'"orderId":(-?\d+)')
IDLE_WAIT_S = 1.0
BUSY_WAIT_S = 0.02
CONFIRM_TIMEOUT_S = 10.0


def output_subject(role: str, payload: bytes) -> str:
    """Where the pass-through sends a payload (no validation: anything without an orderId is refused)."""
    if role == "distributor":
        return "orders.express" if _EXPRESS in payload else "orders.standard"
    found = _ORDER_ID.search(payload)
    if found is None:
        raise ValueError("no orderId")
    return f"$KV.{BUCKETS[role]}.{found.group(1).decode()}"


class Confirmations:
    """Publishes confirmed by the server: each publish (or each fast batch) has a reply subject of its own
    under one wildcard inbox, and what the server answers there resolves its future."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.prefix = f"{nc.new_inbox()}."
        self.tokens = itertools.count()
        self.waiting: dict[str, asyncio.Future[dict[str, object]]] = {}
        self.refused: dict[str, set[int]] = {}  # fast batch -> its messages the server refused on the way

    async def start(self) -> None:
        await self.nc.subscribe(self.prefix + ">", cb=self.on_reply)

    async def on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self.prefix) :].split(".", 1)[0]  # a fast batch's answers: <id>.<flow>...$FI
        try:
            answer = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            answer = {"error": {"description": f"no PubAck: {msg.data[:80]!r} {msg.headers}"}}
        if answer.get("type") == "ack":  # a fast batch's flow control: progress only
            return
        if answer.get("type") == "err":  # a message of a fast batch refused (the batch ends there)
            self.refused.setdefault(token, set()).add(int(answer["seq"]))
            return
        future = self.waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_result(answer)

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> asyncio.Future[dict[str, object]]:
        token = str(next(self.tokens))
        future = self.waiting[token] = asyncio.get_running_loop().create_future()
        await self.nc.publish(subject, payload, reply=self.prefix + token, headers={"Nats-Msg-Id": msg_id})
        return future

    async def publish_batch(self, outputs: list[tuple[str, bytes, str]]) -> tuple[str, asyncio.Future[dict[str, object]]]:
        """Publish `outputs` (subject, payload, msg id) as one fast batch; its id, and a future for the final PubAck."""
        if len(outputs) == 1:
            return "", await self.publish(*outputs[0])
        token = nats.nuid.NUID().next().decode()
        future = self.waiting[token] = asyncio.get_running_loop().create_future()
        last = len(outputs)
        for n, (subject, payload, msg_id) in enumerate(outputs, 1):
            op = 0 if n == 1 else 2 if n == last else 1  # start, append, commit
            await self.nc.publish(
                subject, payload, reply=f"{self.prefix}{token}.500.fail.{n}.{op}.$FI", headers={"Nats-Msg-Id": msg_id}
            )
        return token, future

    async def stored(self, token: str, future: asyncio.Future[dict[str, object]], size: int) -> list[bool]:
        """Which of a fast batch's `size` messages are stored: the first `count` of the PubAck, but refused ones."""
        try:
            answer = await asyncio.wait_for(future, CONFIRM_TIMEOUT_S)
        except TimeoutError:
            answer = {"error": "no PubAck"}
        refused = self.refused.pop(token, set())
        count = 0 if "error" in answer else int(answer.get("count", 1))  # type: ignore[call-overload]  # 1: a single publish
        return [n <= count and n not in refused for n in range(1, size + 1)]

    async def confirm(self, futures: list[asyncio.Future[dict[str, object]]]) -> list[bool]:
        """Whether each publish was confirmed (a PubAck without error) within the timeout."""
        await asyncio.wait(futures, timeout=CONFIRM_TIMEOUT_S)
        return [future.done() and "error" not in future.result() for future in futures]


async def work(
    subscription: JetStreamContext.PullSubscription,
    role: str,
    batch: int,
    stop: asyncio.Event,
    confirmations: Confirmations,
    fast: bool,
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
        outputs: list[tuple[str, bytes, str]] = []
        for msg in msgs:
            try:
                subject = output_subject(role, msg.data)
            except ValueError as exc:  # not an order: said and dropped from the stream, not redelivered forever
                print(f"raw {role}: {exc} in {STREAM} sequence {msg.metadata.sequence.stream}; terminated", file=sys.stderr)
                await msg.term()
                continue
            routed.append(msg)
            outputs.append((subject, msg.data, f"{STREAM}:{msg.metadata.sequence.stream}:0"))
        if not outputs:
            continue
        if fast:
            confirmed = await confirmations.stored(*await confirmations.publish_batch(outputs), len(outputs))
        else:
            confirmed = await confirmations.confirm([await confirmations.publish(*output) for output in outputs])
        for msg, ok in zip(routed, confirmed):
            await (msg.ack() if ok else msg.nak())


async def main(url: str, roles: list[str], batch: int, loops: int, fast: bool) -> None:
    nc = await nats.connect(url, name="raw-baseline", max_reconnect_attempts=-1)
    confirmations = Confirmations(nc)
    await confirmations.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    js = nc.jetstream()
    bound = [(role, await js.pull_subscribe_bind(durable=role, stream=STREAM)) for role in roles for _ in range(loops)]
    print(READY_LINE, flush=True)
    await asyncio.gather(*(work(subscription, role, batch, stop, confirmations, fast) for role, subscription in bound))
    await nc.flush()  # the last acks are out; drain would wait on the pull subscriptions' inboxes
    await nc.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--role", choices=[*ROLES, "all"], required=True)
    parser.add_argument("--batch", type=int, default=256, help="messages per fetch")
    parser.add_argument("--loops", type=int, default=4, help="concurrent fetch loops per function")
    parser.add_argument("--fast-batches", action="store_true", help="confirm each fetched batch's outputs as one fast batch")
    args = parser.parse_args()
    roles = list(ROLES) if args.role == "all" else [args.role]
    uvloop.run(main(args.nats_url, roles, args.batch, args.loops, args.fast_batches))


if __name__ == "__main__":
    cli()
