"""Every generated NATS user against every JetStream API operation and every subject of the manifest.

A real nats-server configured only with what `ebbtide nats-config` generates from the reference manifest,
provisioned by `admin` and holding data in every stream. For each user (each function, ingress, observer,
admin), each JetStream API operation on each stream and consumer of the manifest, on one stream and
consumer outside it and on one that does not exist yet, and a publish and a subscription on each subject:
the outcome must be exactly what the design below says (SECURITY.md). Refused means the server answered
with a permissions violation; allowed means the request reached JetStream (whatever it answered). Refused
requests carry what would do damage if they went through (shrink a stream to one message, purge it, delete
a message, redefine a consumer), and afterwards every stream's configuration and contents and every
consumer's configuration are checked unchanged: nothing was written.

The design is written out here, on purpose not computed by the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nkeys
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import api

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.broker.credentials import NatsAuth
from ebbtide.broker.users import ADMIN_USER, OBSERVER_USER, AuthBundle, write_bundle
from ebbtide.manifest import load_manifest
from tests.conftest import manifest_copy

FUNCTIONS = ("distributor", "receiver-express", "receiver-standard")
INGRESS = "ingress"
USERS = (*FUNCTIONS, INGRESS, OBSERVER_USER, ADMIN_USER)
BUCKETS = ("outbox-express", "outbox-standard")
KV_STREAMS = tuple(f"KV_{bucket}" for bucket in BUCKETS)
OUTSIDE = "OUTSIDE"  # a stream (and consumer `spy`) the manifest does not know
ROGUE = "ROGUE"  # a stream nobody created
# Rollouts (issue 21): the records every host watches, the candidates' bytes, the shadow samples.
ROLLOUTS, MODULES, SHADOW = "KV_ebbtide-rollouts", "OBJ_ebbtide-modules", "SHADOW"
STREAMS = ("ORDERS", "DLQ", *KV_STREAMS, ROLLOUTS, MODULES, SHADOW, OUTSIDE, ROGUE)
CONSUMERS = (*(("ORDERS", fn) for fn in FUNCTIONS), (OUTSIDE, "spy"))
STREAM_OPERATIONS = (
    "STREAM.CREATE",
    "STREAM.UPDATE",
    "STREAM.DELETE",
    "STREAM.PURGE",
    "STREAM.INFO",
    "STREAM.MSG.GET",
    "STREAM.MSG.DELETE",
    "DIRECT.GET",
    "CONSUMER.CREATE",
)  # the last: ephemeral
CONSUMER_OPERATIONS = ("CONSUMER.CREATE", "CONSUMER.DURABLE.CREATE", "CONSUMER.DELETE", "CONSUMER.INFO", "CONSUMER.MSG.NEXT")
ACCOUNT_OPERATIONS = ("INFO", "STREAM.NAMES", "STREAM.LIST")
DESTRUCTIVE = ("STREAM.DELETE", "CONSUMER.DELETE")  # admin's row runs these last

# Publish and subscribe: every subject of the reference pipeline, the inboxes, and one outside it.
SUBJECTS = (
    "orders.ingress",
    "orders.express",
    "orders.standard",
    "$KV.outbox-express.probe",
    "$KV.outbox-standard.probe",
    *(f"dlq.{fn}" for fn in FUNCTIONS),
    *(f"ebbtide.status_reports.{fn}" for fn in FUNCTIONS),
    "ebbtide.status_reports-request",
    *(f"$KV.ebbtide-rollouts.{fn}" for fn in FUNCTIONS),
    *(f"ebbtide.shadow.{fn}.probe" for fn in FUNCTIONS),
    "outside.x",
)
INBOXES = ("_INBOX.probe", *(f"_ebbtide_inbox.{user}.probe" for user in (*FUNCTIONS, OBSERVER_USER)))
STORED_IN = {
    "orders.": "ORDERS",
    "$KV.outbox-express.": "KV_outbox-express",
    "$KV.outbox-standard.": "KV_outbox-standard",
    "dlq.": "DLQ",
    "$KV.ebbtide-rollouts.": ROLLOUTS,
    "ebbtide.shadow.": SHADOW,
    "outside.": OUTSIDE,
}


# -- the design ---------------------------------------------------------------------------------------


def api_allowed(user: str, subject: str) -> bool:
    """$JS.API.<operation>.<target>: functions read their own consumer and pull from it, and read a message of
    their trigger's stream (the age of the oldest unhandled one); observer reads
    the outboxes, the dead letters, the manifest's streams (`replay`) and the shadow samples; ingress nothing;
    admin everything."""
    if user == ADMIN_USER:
        return True
    if user in FUNCTIONS:
        # Following rollouts: read the records and the candidates' bytes (ephemeral consumers on those two
        # streams only; no stream changed).
        rollouts = {f"$JS.API.{op}.{stream}" for op in ("STREAM.INFO", "CONSUMER.CREATE") for stream in (ROLLOUTS, MODULES)}
        rollouts.add(f"$JS.API.STREAM.MSG.GET.{MODULES}")
        own = {f"$JS.API.CONSUMER.INFO.ORDERS.{user}", f"$JS.API.CONSUMER.MSG.NEXT.ORDERS.{user}"}
        # The stored time of its oldest unhandled message (ebbtide_oldest_pending_seconds): a read of its
        # trigger's stream (issue 25). Reading only: nothing of ORDERS can be changed through it.
        own.add("$JS.API.STREAM.MSG.GET.ORDERS")
        return subject in own | rollouts
    if user == OBSERVER_USER:
        reads = {
            f"$JS.API.STREAM.{op}.{stream}" for op in ("INFO", "MSG.GET") for stream in ("DLQ", "ORDERS", *KV_STREAMS, SHADOW)
        }
        return subject in reads | {f"$JS.API.DIRECT.GET.{stream}" for stream in KV_STREAMS}
    return False


def rollout_writes(function: str) -> set[str]:
    """A host writes its own function's rollout record (a canary's rollback) and its own shadow samples."""
    return {f"$KV.ebbtide-rollouts.{function}", f"ebbtide.shadow.{function}.probe"}


PUBLISH = {
    "distributor": {
        "orders.express",
        "orders.standard",
        "dlq.distributor",
        "ebbtide.status_reports.distributor",
        *rollout_writes("distributor"),
    },
    "receiver-express": {
        "$KV.outbox-express.probe",
        "dlq.receiver-express",
        "ebbtide.status_reports.receiver-express",
        *rollout_writes("receiver-express"),
    },
    "receiver-standard": {
        "$KV.outbox-standard.probe",
        "dlq.receiver-standard",
        "ebbtide.status_reports.receiver-standard",
        *rollout_writes("receiver-standard"),
    },
    INGRESS: {"orders.ingress"},
    OBSERVER_USER: {"ebbtide.status_reports-request"},
}
SUBSCRIBE = {
    "distributor": {"orders.ingress", "ebbtide.status_reports-request", "_ebbtide_inbox.distributor.probe"},
    "receiver-express": {"orders.express", "ebbtide.status_reports-request", "_ebbtide_inbox.receiver-express.probe"},
    "receiver-standard": {"orders.standard", "ebbtide.status_reports-request", "_ebbtide_inbox.receiver-standard.probe"},
    INGRESS: {"_INBOX.probe"},
    OBSERVER_USER: {
        "$KV.outbox-express.probe",
        "$KV.outbox-standard.probe",
        "_ebbtide_inbox.observer.probe",
        *(f"ebbtide.status_reports.{fn}" for fn in FUNCTIONS),
    },
}


def publish_allowed(user: str, subject: str) -> bool:
    return user == ADMIN_USER or subject in PUBLISH[user]


def subscribe_allowed(user: str, subject: str) -> bool:
    return user == ADMIN_USER or subject in SUBSCRIBE[user]


# -- the server ---------------------------------------------------------------------------------------


@dataclass
class Setup:
    server: EmbeddedNats
    bundle: AuthBundle
    admin: NatsClient


@pytest.fixture
async def setup(tmp_path: Path, reference_manifest) -> AsyncIterator[Setup]:  # type: ignore[no-untyped-def]
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    assert tuple(manifest.spec.functions) == FUNCTIONS and tuple(manifest.spec.kv) == BUCKETS
    bundle = write_bundle(manifest, tmp_path / "auth")
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, config_file=bundle.server_config) as server:
        admin = await nats.connect(server.url, **bundle.admin().connect_options())
        try:
            js = admin.jetstream()
            await provision(js, manifest)
            await js.add_stream(name=OUTSIDE, subjects=["outside.>"])
            await js.add_consumer(OUTSIDE, api.ConsumerConfig(durable_name="spy", ack_policy=api.AckPolicy.EXPLICIT))
            for subject in ("orders.ingress", "orders.ingress", "orders.express", "dlq.distributor", "outside.x"):
                await js.publish(subject, b'{"orderId": 1}')
            for bucket in BUCKETS:
                await (await js.key_value(bucket)).put("1", b'{"orderId": 1}')
            await (await js.key_value("ebbtide-rollouts")).put("other", b"{}")  # a function writes its own key
            await (await js.object_store("ebbtide-modules")).put("probe", b"\x00asm")
            await js.publish("ebbtide.shadow.distributor.same", b"{}")
            yield Setup(server, bundle, admin)
        finally:
            await admin.drain()


def credentials(bundle: AuthBundle, user: str) -> NatsAuth:
    if user == ADMIN_USER:
        return bundle.admin()
    if user == OBSERVER_USER:
        return bundle.observer()
    if user == INGRESS:
        return bundle.ingress()
    return bundle.function(user)


class Probe:
    """One user's connection, speaking the NATS protocol itself: each attempt is followed by a PING, and the
    server answers a refused publish or subscription with `-ERR 'Permissions Violation ...'` before it
    answers that PING, so every attempt is decided without waiting for a timeout. (nats-py's flush cannot
    be used for this: its PING overtakes the publishes still in its write buffer.)"""

    def __init__(self, inbox_prefix: str) -> None:
        self.inbox = f"{inbox_prefix or '_INBOX'}.probe-reply"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._sids = itertools.count(1)

    async def connect(self, url: str, auth: NatsAuth) -> Probe:
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        self._reader, self._writer = await asyncio.open_connection(host, int(port))
        info = json.loads((await self._reader.readline()).split(b" ", 1)[1])
        options: dict[str, object] = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
        if auth.nkey_seed_file:
            keys = nkeys.from_seed(bytearray(Path(auth.nkey_seed_file).read_bytes().strip()))
            options["nkey"] = keys.public_key.decode()
            options["sig"] = base64.urlsafe_b64encode(keys.sign(info["nonce"].encode())).rstrip(b"=").decode()
        else:
            options["user"], options["pass"] = auth.user, auth.password
        errors, _ = await self._send(f"CONNECT {json.dumps(options)}\r\n".encode())
        assert not errors, errors
        self._sub_id = await self._sub(self.inbox)  # where every answer arrives
        return self

    async def _sub(self, subject: str) -> str:
        sid = str(next(self._sids))
        errors, _ = await self._send(f"SUB {subject} {sid}\r\n".encode())
        assert not errors, (subject, errors)
        return sid

    async def _send(self, command: bytes) -> tuple[list[str], list[str]]:
        """Send the command and a PING; (errors, subscription ids of messages) that came before the PONG."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(command + b"PING\r\n")
        await self._writer.drain()
        errors: list[str] = []
        messages: list[str] = []
        while (line := await asyncio.wait_for(self._read_op(messages), 10)) != "PONG":
            if line.startswith("-ERR"):
                errors.append(line)
        return errors, messages

    async def _read_op(self, messages: list[str]) -> str:
        """The next operation line; a message's payload is read and its subscription noted in `messages`."""
        assert self._reader is not None and self._writer is not None
        while True:
            line = (await self._reader.readline()).decode().rstrip("\r\n")
            if not line:
                raise ConnectionError("the server closed the connection")
            op, *args = line.split(" ")
            if op in ("MSG", "HMSG"):
                await self._reader.readexactly(int(args[-1]) + 2)
                messages.append(args[1])  # the subscription's id (a pulled message keeps its own subject)
                return op
            if op == "PING":
                self._writer.write(b"PONG\r\n")
                continue
            if op in ("+OK", "INFO"):
                continue
            return line

    @staticmethod
    def _refused(errors: list[str], kind: str, subject: str) -> bool:
        unexpected = [e for e in errors if f'permissions violation for {kind} to "{subject}"' not in e.lower()]
        assert not unexpected, unexpected
        return bool(errors)

    async def request(self, subject: str, body: bytes) -> bool:
        """True if the request reached JetStream (an answer came), False if the server refused it."""
        errors, messages = await self._send(f"PUB {subject} {self.inbox} {len(body)}\r\n".encode() + body + b"\r\n")
        if self._refused(errors, "publish", subject.lower()):
            return False
        try:
            while self._sub_id not in messages:  # JetStream answers on its own time, after the PONG
                line = await asyncio.wait_for(self._read_op(messages), 5)
                assert not line.startswith("-ERR"), line
        except TimeoutError:
            raise AssertionError(f"{subject}: neither refused nor answered") from None
        return True

    async def publish(self, subject: str) -> bool:
        body = b'{"orderId": 2}'
        errors, _ = await self._send(f"PUB {subject} {len(body)}\r\n".encode() + body + b"\r\n")
        return not self._refused(errors, "publish", subject.lower())

    async def subscribe(self, subject: str) -> bool:
        sid = str(next(self._sids))
        errors, _ = await self._send(f"SUB {subject} {sid}\r\nUNSUB {sid}\r\n".encode())
        return not self._refused(errors, "subscription", subject.lower())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass
class Snapshot:
    streams: dict[str, tuple[api.StreamConfig, tuple[int, int, int, int]]] = field(default_factory=dict)
    consumers: dict[str, dict[str, api.ConsumerConfig]] = field(default_factory=dict)


async def snapshot(admin: NatsClient) -> Snapshot:
    js = admin.jetstream()
    taken = Snapshot()
    for info in await js.streams_info():
        state = info.state
        taken.streams[info.config.name] = (info.config, (state.messages, state.bytes, state.first_seq, state.last_seq))
        taken.consumers[info.config.name] = {c.name: c.config for c in await js.consumers_info(info.config.name)}
    return taken


# -- the requests ------------------------------------------------------------------------------------


def api_requests(user: str, before: Snapshot) -> Iterator[tuple[str, bytes]]:
    """(subject, body) of every operation. Refused ones carry a damaging body (if it went through, the
    state check would see it); admin's, which all go through, a harmless one (JetStream answers an error)."""
    harmless = user == ADMIN_USER
    for operation in ACCOUNT_OPERATIONS:
        yield f"$JS.API.{operation}", b""
    for stream in STREAMS:
        config, (_, _, first_seq, _) = before.streams.get(
            stream, (api.StreamConfig(name=stream, subjects=["rogue.>"]), (0, 0, 1, 0))
        )
        shrunk = json.dumps({**config.as_dict(), "max_msgs": 1}).encode()
        mismatch = json.dumps({"name": "MISMATCH"}).encode()
        bodies = {
            "STREAM.CREATE": mismatch if harmless else shrunk,
            "STREAM.UPDATE": mismatch if harmless else shrunk,
            "STREAM.DELETE": b"",
            "STREAM.PURGE": json.dumps({"keep": 1_000_000} if harmless else {}).encode(),
            "STREAM.INFO": b"",
            "STREAM.MSG.GET": json.dumps({"seq": first_seq}).encode(),
            "STREAM.MSG.DELETE": json.dumps({"seq": 1 << 40 if harmless else first_seq}).encode(),
            "DIRECT.GET": json.dumps({"seq": first_seq}).encode(),
            "CONSUMER.CREATE": json.dumps(
                {"stream_name": "MISMATCH" if harmless else stream, "config": {"ack_policy": "explicit"}}
            ).encode(),
        }
        for operation in STREAM_OPERATIONS:
            if not (harmless and operation in DESTRUCTIVE):
                yield f"$JS.API.{operation}.{stream}", bodies[operation]
    for stream, consumer in CONSUMERS:
        redefined = {
            "stream_name": stream,
            "config": {"durable_name": consumer, "name": consumer, "ack_policy": "none", "deliver_policy": "new"},
        }
        if harmless:
            redefined["config"] = {"durable_name": "MISMATCH", "name": "MISMATCH"}
        bodies = {
            "CONSUMER.CREATE": json.dumps(redefined).encode(),
            "CONSUMER.DURABLE.CREATE": json.dumps(redefined).encode(),
            "CONSUMER.DELETE": b"",
            "CONSUMER.INFO": b"",
            "CONSUMER.MSG.NEXT": json.dumps({"batch": 1, "no_wait": True}).encode(),
        }
        for operation in CONSUMER_OPERATIONS:
            if not (harmless and operation in DESTRUCTIVE):
                yield f"$JS.API.{operation}.{stream}.{consumer}", bodies[operation]


def stored_in(subject: str) -> str | None:
    return next((stream for prefix, stream in STORED_IN.items() if subject.startswith(prefix)), None)


@pytest.mark.parametrize("user", USERS)
async def test_each_user_may_do_exactly_what_the_design_says(setup: Setup, user: str) -> None:
    before = await snapshot(setup.admin)
    assert set(before.streams) == set(STREAMS) - {ROGUE}
    auth = credentials(setup.bundle, user)
    probe = await Probe(auth.inbox_prefix).connect(setup.server.url, auth)
    wrong: list[str] = []
    try:
        for subject, body in api_requests(user, before):
            allowed = await probe.request(subject, body)
            if allowed != api_allowed(user, subject):
                wrong.append(f"{subject}: {'allowed' if allowed else 'refused'}")
        for subject in (*SUBJECTS, *INBOXES):
            if await probe.subscribe(subject) != subscribe_allowed(user, subject):
                wrong.append(f"subscribe {subject}: {'refused' if subscribe_allowed(user, subject) else 'allowed'}")
        published: dict[str, int] = {}
        for subject in SUBJECTS:
            allowed = await probe.publish(subject)
            if allowed != publish_allowed(user, subject):
                wrong.append(f"publish {subject}: {'allowed' if allowed else 'refused'}")
            if allowed and (stream := stored_in(subject)) is not None:
                published[stream] = published.get(stream, 0) + 1
        assert not wrong, f"{user}, against the design:\n  " + "\n  ".join(wrong)

        after = await snapshot(setup.admin)
        if user == ADMIN_USER:
            await _admin_deletes(probe, after, setup.admin)
            return
        # Nothing written but the allowed publishes: same streams, settings, consumers; contents grown by those alone.
        assert set(after.streams) == set(before.streams)
        for stream, (config, (messages, _, first_seq, last_seq)) in before.streams.items():
            config_after, (messages_after, _, first_after, last_after) = after.streams[stream]
            assert config_after == config, stream
            grown = published.get(stream, 0)
            assert (messages_after, first_after, last_after) == (messages + grown, first_seq, last_seq + grown), stream
        # A function's allowed ephemeral consumers on the rollout streams are reads; every other consumer is as it was.
        new_readers = {
            stream: set(after.consumers.get(stream, {})) - set(before.consumers.get(stream, {})) for stream in (ROLLOUTS, MODULES)
        }
        if user not in FUNCTIONS:
            assert not any(new_readers.values())
        for stream in (ROLLOUTS, MODULES):
            for name in new_readers[stream]:
                del after.consumers[stream][name]
        assert after.consumers == before.consumers
    finally:
        await probe.close()


async def _admin_deletes(probe: Probe, before: Snapshot, admin: NatsClient) -> None:
    """Admin's destructive operations, last: each goes through and does what it says."""
    for stream, consumer in CONSUMERS:
        assert await probe.request(f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", b"")
    for stream in before.streams:
        assert await probe.request(f"$JS.API.STREAM.DELETE.{stream}", b"")
    assert await admin.jetstream().streams_info() == []
