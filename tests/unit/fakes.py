"""Small in-memory stand-ins for the broker, for unit tests of the pool and the executor.

`FakeNats` plays nats-py's Client as far as ebbtide's broker code uses it (publish, subscribe,
max_payload, and the internals broker/_nats_fast.py writes protocol bytes and dispatches messages
through): the real `ConfirmedPublisher` and real nats-py `Msg` objects run on it unchanged, so a test
sees the bytes they would send (effects with their headers, `+ACK`, `-NAK {"delay": ...}`, `+WPI`).
Publishes that ask for a reply are answered like a JetStream stream would: a PubAck (duplicates by
`Nats-Msg-Id` recognised), or an error for the subjects a test says to refuse, or nothing at all for the
subjects a test says to leave unanswered. `FakeConsumer` hands out batches a test queues.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from nats.aio.msg import Msg


@dataclass(frozen=True)
class Published:
    subject: str
    payload: bytes
    reply: str
    headers: dict[str, str] | None


class _Subscription:
    def __init__(self, fake: FakeNats, subject: str) -> None:
        self._fake, self.subject = fake, subject
        self._pending_queue: asyncio.Queue[Msg] = asyncio.Queue()  # replaced by _nats_fast.subscribe_direct
        self._pending_size = 0

    async def unsubscribe(self) -> None:
        self._fake.subscriptions.pop(self.subject, None)


@dataclass
class FakeNats:
    refuse: set[str] = field(default_factory=set)  # subjects whose publishes the "server" refuses
    unanswered: set[str] = field(default_factory=set)  # subjects whose publishes get no PubAck at all
    full: set[str] = field(default_factory=set)  # subjects whose stream refuses for lack of space (max_bytes)
    max_payload: int = 1 << 20
    published: list[Published] = field(default_factory=list)
    subscriptions: dict[str, object] = field(default_factory=dict)
    _inbox_prefix: bytes = b"_INBOX"
    _seen_ids: dict[str, int] = field(default_factory=dict)
    _replies: set[asyncio.Task] = field(default_factory=set)
    # nats-py internals that broker/_nats_fast.py reads
    is_closed: bool = False
    is_draining_pubs: bool = False
    is_connected: bool = True
    _max_pending_size: int = 1 << 21
    _pending_data_size: int = 0
    _flush_queue: None = None
    stats: dict[str, int] = field(default_factory=lambda: {"out_msgs": 0, "out_bytes": 0})

    # -- what nats-py's Client offers --------------------------------------------------------------------

    async def subscribe(self, subject: str, cb=None, **_: object) -> _Subscription:
        subscription = _Subscription(self, subject)
        self.subscriptions[subject] = cb or subscription
        return subscription

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None) -> None:
        self._receive(subject, payload, reply, dict(headers) if headers else None)

    async def _send_command(self, cmd: bytes) -> None:
        """Protocol bytes as _nats_fast.write sends them: PUB and HPUB commands, one after another."""
        pos = 0
        while pos < len(cmd):
            eol = cmd.index(b"\r\n", pos)
            verb, subject, *sizes = cmd[pos:eol].decode().split(" ")
            pos = eol + 2
            headers = None
            if verb == "PUB":
                reply = sizes[0] if len(sizes) == 2 else ""
                header_size, total = 0, int(sizes[-1])
            else:
                assert verb == "HPUB", verb
                reply = sizes[0] if len(sizes) == 3 else ""
                header_size, total = int(sizes[-2]), int(sizes[-1])
                lines = cmd[pos : pos + header_size].decode().split("\r\n")
                assert lines[0] == "NATS/1.0" and lines[-2:] == ["", ""], lines
                headers = dict(line.split(": ", 1) for line in lines[1:-2])
            payload = cmd[pos + header_size : pos + total]
            assert cmd[pos + total : pos + total + 2] == b"\r\n"
            pos += total + 2
            self._receive(subject, payload, reply, headers)

    def _receive(self, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None) -> None:
        self.published.append(Published(subject, payload, reply, headers))
        subscriber = self._subscriber(reply) if reply else None
        if subscriber is None or subject in self.unanswered:
            return
        answer = Msg(self, subject=reply, data=self._pub_ack(subject, headers))  # type: ignore[arg-type]
        if isinstance(subscriber, _Subscription):  # no callback: through its queue, as nats-py's read loop does
            asyncio.get_running_loop().call_soon(subscriber._pending_queue.put_nowait, answer)
            return
        task = asyncio.get_running_loop().create_task(subscriber(answer))  # later, as from the socket
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    def _subscriber(self, reply: str):
        for pattern, subscriber in self.subscriptions.items():
            if pattern.endswith(".*") and reply.startswith(pattern[:-1]) and "." not in reply[len(pattern) - 1 :]:
                return subscriber
            if pattern.endswith(".>") and reply.startswith(pattern[:-1]) and len(reply) > len(pattern) - 1:
                return subscriber
        return None

    def _pub_ack(self, subject: str, headers: dict[str, str] | None) -> bytes:
        if subject in self.refuse:
            return json.dumps({"error": {"code": 503, "err_code": 10077, "description": "refused by the test"}}).encode()
        if subject in self.full:  # what nats-server answers for a stream at its max_bytes with discard new
            return json.dumps({"error": {"code": 503, "err_code": 10077, "description": "maximum bytes exceeded"}}).encode()
        msg_id = (headers or {}).get("Nats-Msg-Id")
        if msg_id is not None and msg_id in self._seen_ids:
            return json.dumps({"stream": "TEST", "seq": self._seen_ids[msg_id], "duplicate": True}).encode()
        seq = len(self._seen_ids) + 1
        if msg_id is not None:
            self._seen_ids[msg_id] = seq
        return json.dumps({"stream": "TEST", "seq": seq}).encode()

    # -- for tests ---------------------------------------------------------------------------------------

    def delivery(
        self,
        data: bytes,
        *,
        sequence: int,
        delivered: int = 1,
        subject: str = "in.chaos",
        headers: dict[str, str] | None = None,
        stream: str = "TEST",
        consumer: str = "chaos",
    ) -> Msg:
        """A message as JetStream delivers it: its acks are published back into this fake."""
        reply = f"$JS.ACK.{stream}.{consumer}.{delivered}.{sequence}.{sequence}.1732800000000000000.0"
        return Msg(self, subject=subject, reply=reply, data=data, headers=headers)  # type: ignore[arg-type]

    def acks(self, msg: Msg) -> list[bytes]:
        """What was sent to `msg`'s ack subject, in order (b"" is +ACK: nats-py sends an empty payload)."""
        return [p.payload for p in self.published if p.subject == msg.reply]

    def sent_to(self, subject: str) -> list[Published]:
        return [p for p in self.published if p.subject == subject]

    async def settled(self) -> None:
        """Let the PubAcks in flight arrive."""
        await asyncio.sleep(0)  # answers handed to a subscription's queue arrive on the next loop iteration
        while self._replies:
            await asyncio.gather(*self._replies)


def nak_delay_s(ack: bytes) -> float | None:
    """The delay of a `-NAK {"delay": ns}` (None for a nak without delay)."""
    assert ack.startswith(b"-NAK"), ack
    body = ack[len(b"-NAK") :].strip()
    return json.loads(body)["delay"] / 1e9 if body else None


class FakeConsumer:
    """Hands out the batches a test queues; an empty fetch waits briefly, like a long poll that ends."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[list[Msg]] = asyncio.Queue()
        self.closed = False

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        try:
            return await asyncio.wait_for(self.batches.get(), timeout=min(wait_s, 0.05))
        except TimeoutError:
            return []

    async def close(self) -> None:
        self.closed = True
