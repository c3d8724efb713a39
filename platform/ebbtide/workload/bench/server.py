"""What nats-server spends per message on each way of publishing and of settling (`--scenario server`).

Publishing N messages of 300 bytes with `Nats-Msg-Id` into a file stream, in rounds of a fetched batch's
size: a PubAck per publish; a fast batch per round, committed by its last publish (ADR-50, what ebbtide's
host does on streams with `allow_batched`); an atomic batch per round (ADR-50, `allow_atomic`). Consuming
N messages with pull requests of a batch each: an explicit ack per message (what ebbtide does); an
`AckAll` of each batch's last message (ack policy `all`: one ack settles everything below it, which is
safe only for a consumer whose every pending message is the acker's own, see README: Performance); no ack
at all (ack policy `none`, for the delivery's own share). The forms alternate round by round; nats-server's
CPU time (/proc) per message, median of the rounds. The client speaks raw protocol, so its own cost does
not pace the server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api

from ...broker import EmbeddedNats, connect
from .comparison import cpu_seconds
from .report import BenchReport, Section
from .stats import spread

PAYLOAD = b"o" * 300
PUBLISH_FORMS = ("a PubAck per publish", "a fast batch per round", "an atomic batch per round")
SETTLE_FORMS = ("an explicit ack per message", "AckAll per batch", "no ack (delivery only)")
_ACK_POLICIES = {SETTLE_FORMS[0]: api.AckPolicy.EXPLICIT, SETTLE_FORMS[1]: api.AckPolicy.ALL, SETTLE_FORMS[2]: api.AckPolicy.NONE}


async def bench_server(report: BenchReport, quick: bool, out_dir: Path) -> None:
    n, batch, rounds = (5_000, 256, 1) if quick else (30_000, 256, 3)
    n -= n % batch
    data_dir = out_dir / "nats-server-costs"
    shutil.rmtree(data_dir, ignore_errors=True)
    publish: dict[str, list[float]] = {form: [] for form in PUBLISH_FORMS}
    settle: dict[str, list[float]] = {form: [] for form in SETTLE_FORMS}
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench-server")
        assert server.pid is not None
        pid = server.pid
        try:
            for round_ in range(rounds):
                for form in PUBLISH_FORMS:
                    stream = f"P{round_}{PUBLISH_FORMS.index(form)}"
                    publish[form].append(await _per_message(pid, n, _publish(nc, stream, form, n, batch)))
                    await nc.jetstream().delete_stream(stream)
                for form in SETTLE_FORMS:
                    stream = f"C{round_}{SETTLE_FORMS.index(form)}"
                    await _publish(nc, stream, PUBLISH_FORMS[1], n, batch)
                    settle[form].append(await _per_message(pid, n, _consume(nc, stream, form, n, batch)))
                    await nc.jetstream().delete_stream(stream)
                print(f"server: round {round_ + 1}/{rounds} done", flush=True)
        finally:
            await nc.close()
    how = f"{n:,} messages per form and round, rounds of {batch}, {rounds} alternating round(s), nats-server CPU (/proc), median"
    lines = ["| publishing | nats-server CPU µs per message |", "|---|---:|"]
    lines += [f"| {form} | {spread(v).median:.1f} |" for form, v in publish.items()]
    lines += ["", "| delivering and settling | nats-server CPU µs per message |", "|---|---:|"]
    lines += [f"| {form} | {spread(v).median:.1f} |" for form, v in settle.items()]
    lines += ["", f"Measured: {how}. " + (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ")]
    report.sections.append(Section("What nats-server spends per message, by publish and ack form", "\n".join(lines)))
    for form, values in (*publish.items(), *settle.items()):
        report.add(f"nats-server CPU per message: {form}", spread(values).median, "µs", how)


async def _per_message(pid: int, n: int, run: Awaitable[None]) -> float:
    before = cpu_seconds(pid)
    await run
    return (cpu_seconds(pid) - before) / n * 1e6


async def _publish(nc: NatsClient, stream: str, form: str, n: int, batch: int) -> None:
    """`n` publishes into a new stream `stream`, `batch` at a time, each round confirmed before the next."""
    await nc.jetstream().add_stream(
        api.StreamConfig(name=stream, subjects=[f"{stream}.>"], allow_batched=True, allow_atomic=True, duplicate_window=120)
    )
    inbox = f"{nc.new_inbox()}."
    answered = asyncio.Event()
    left = 0

    async def on_answer(msg: Msg) -> None:
        nonlocal left
        if msg.data.startswith(b'{"type"') or not msg.data:  # a fast batch's flow answer, an atomic append's ack
            return
        left -= 1
        if left == 0:
            answered.set()

    subscription = await nc.subscribe(inbox + ">", cb=on_answer)
    subject = f"{stream}.x"
    for round_ in range(n // batch):
        answered.clear()
        commands = []
        for i in range(1, batch + 1):
            msg_id = f"Nats-Msg-Id: {stream}-{round_}-{i}\r\n"
            if form == PUBLISH_FORMS[0]:
                header, reply = msg_id, f"{inbox}{round_}.{i}"
            elif form == PUBLISH_FORMS[1]:
                op = 0 if i == 1 else 2 if i == batch else 1
                header, reply = msg_id, f"{inbox}b{round_}.500.fail.{i}.{op}.$FI"
            else:
                commit = "Nats-Batch-Commit: 1\r\n" if i == batch else ""
                header = f"{msg_id}Nats-Batch-Id: {stream}{round_}\r\nNats-Batch-Sequence: {i}\r\n{commit}"
                reply = f"{inbox}a{round_}" if i == batch else ""
            block = f"NATS/1.0\r\n{header}\r\n".encode()
            commands.append(
                f"HPUB {subject} {reply} {len(block)} {len(block) + len(PAYLOAD)}\r\n".encode() + block + PAYLOAD + b"\r\n"
            )
        left = batch if form == PUBLISH_FORMS[0] else 1
        await nc._send_command(b"".join(commands))
        await nc._flush_pending()
        await asyncio.wait_for(answered.wait(), 30)
    await subscription.unsubscribe()
    stored = (await nc.jetstream().stream_info(stream)).state.messages
    if stored != n:
        raise RuntimeError(f"{form}: {stored} of {n} messages stored")


async def _consume(nc: NatsClient, stream: str, form: str, n: int, batch: int) -> None:
    """Every message of `stream`, `batch` per pull request, settled as `form` says."""
    js = nc.jetstream()
    await js.add_consumer(
        stream, api.ConsumerConfig(durable_name="c", ack_policy=_ACK_POLICIES[form], max_ack_pending=10 * batch)
    )
    inbox = nc.new_inbox()
    got: list[Msg] = []
    done = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        if msg.headers and not msg.data and msg.headers.get("Status"):  # 404: no more for now
            done.set()
            return
        got.append(msg)
        if len(got) >= batch:
            done.set()

    subscription = await nc.subscribe(inbox, cb=on_message)
    request = json.dumps({"batch": batch, "no_wait": True}).encode()
    total = 0
    deadline = time.monotonic() + 120
    while total < n and time.monotonic() < deadline:
        done.clear()
        got.clear()
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.c", request, reply=inbox)
        await asyncio.wait_for(done.wait(), 30)
        total += len(got)
        if form == SETTLE_FORMS[0]:
            await nc._send_command(b"".join(f"PUB {m.reply} 0\r\n\r\n".encode() for m in got))
        elif form == SETTLE_FORMS[1] and got:
            await nc._send_command(f"PUB {got[-1].reply} 0\r\n\r\n".encode())
        await nc._flush_pending()
    await nc.flush()
    await subscription.unsubscribe()
    if total != n:
        raise RuntimeError(f"{form}: {total} of {n} messages delivered")
    if form != SETTLE_FORMS[2]:
        for _ in range(100):  # the server works through acks on a queue of their own
            if (await js.consumer_info(stream, "c")).num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{form}: messages still unacked")
