"""The reference pipeline written with FastStream, as a Python team would write it instead of ebbtide.

Pure Python handlers with the Wasm functions' rules (`rules.py`), on the same stream (`ORDERS`) and the
same durable pull consumers (provisioned beforehand; FastStream binds to them with `PullSub`). Each fetched
batch is handled concurrently (FastStream's pull subscriber starts one task per message), and each handler:
- distributor: validates and routes; publishes to orders.express|standard with `Nats-Msg-Id` derived from
  the input's stream sequence (a redelivered input is deduplicated), awaiting the PubAck;
- receivers: put the unchanged payload into the outbox KV bucket under its orderId, as nats-py's `kv.put`
  does (a publish to `$KV.<bucket>.<key>`), with `Nats-Msg-Id` too;
- a rejected input goes to `dlq.<function>` with the reason in headers, then is acked; any other failure
  naks it (redelivered). The input is acked only after the handler's publish was confirmed.

Run one process per function (as ebbtide's default) or every role in one:
    python -m ebbtide.workload.baselines.faststream_pipeline --nats-url URL --role distributor|receiver-express|receiver-standard|all
Needs the `baseline` extra (faststream[nats]).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub

from . import READY_LINE, ROLES
from .rules import Rejected, outbox_key, route

STREAM = "ORDERS"
DLQ_STREAM = "DLQ"
TRIGGERS = {"distributor": "orders.ingress", "receiver-express": "orders.express", "receiver-standard": "orders.standard"}
BUCKETS = {"receiver-express": "outbox-express", "receiver-standard": "outbox-standard"}


def build(broker: NatsBroker, role: str, batch: int) -> None:
    """Register the handler of one function on the broker."""
    stream = JStream(STREAM, declare=False)  # provisioned beforehand, like ebbtide's

    async def dead_letter(msg: NatsMessage, reason: Rejected, seq: int) -> None:
        headers = {
            "Nats-Msg-Id": f"{STREAM}:{seq}:dlq",
            "Ebbtide-Function": role,
            "Ebbtide-Reason": "rejected",
            "Ebbtide-Error": str(reason),
            "Ebbtide-Original-Subject": msg.raw_message.subject,
        }
        await broker.publish(msg.body, f"dlq.{role}", headers=headers, stream=DLQ_STREAM)

    @broker.subscriber(
        TRIGGERS[role],
        stream=stream,
        durable=role,
        pull_sub=PullSub(batch_size=batch, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def handle(msg: NatsMessage) -> None:
        seq = msg.raw_message.metadata.sequence.stream
        try:
            if role == "distributor":
                subject = route(msg.body)
            else:
                subject = f"$KV.{BUCKETS[role]}.{outbox_key(msg.body)}"
        except Rejected as reason:
            await dead_letter(msg, reason, seq)
            return
        await broker.publish(
            msg.body,
            subject,
            headers={"Nats-Msg-Id": f"{STREAM}:{seq}:0"},
            stream=STREAM if role == "distributor" else f"KV_{BUCKETS[role]}",
        )


async def main(url: str, roles: list[str], batch: int) -> None:
    # FastStream logs every message at INFO by default; a team would not ship that (and stdout is for `ready`).
    logger = logging.getLogger("faststream-baseline")
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.setLevel(logging.WARNING)
    broker = NatsBroker(url, name="faststream-baseline", logger=logger)
    for role in roles:
        build(broker, role, batch)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    print(READY_LINE, flush=True)
    await stop.wait()
    await broker.stop()  # in-flight handlers finish first


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--role", choices=[*ROLES, "all"], required=True)
    parser.add_argument("--batch", type=int, default=256, help="messages per fetch (as ebbtide's default batch)")
    args = parser.parse_args()
    uvloop.run(main(args.nats_url, list(ROLES) if args.role == "all" else [args.role], args.batch))  # as ebbtide runs


if __name__ == "__main__":
    cli()
