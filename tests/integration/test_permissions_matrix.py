"""Every generated NATS user against every JetStream API operation and every subject of a manifest.

A real nats-server configured only with what `ebbtide nats-config` generates, provisioned by `admin` and
holding data in every stream; run for the repository's ebbtide.toml and for the ordered one
(deploy/ordered/ebbtide.toml: partition consumers, keyed subjects). For each user (each function, ingress,
observer, admin), each JetStream API operation (stream, consumer and account ones: create, update,
delete, purge, info, get, snapshot, restore, leader stepdown, names and lists, pause, the filtered create
form) on each stream and consumer of the manifest, on a consumer on the rollouts and modules streams (a
replica's watcher), on one stream and consumer outside it and on one that does not exist yet, and a
publish and a subscription on each subject (acks of every function's consumer among them): the outcome
must be exactly what the design below says (SECURITY.md). Refused means the server answered with a
permissions violation; allowed means the request reached JetStream (whatever it answered). Refused requests
carry what would do damage if they went through (shrink a stream to one message, purge it, delete a
message, redefine or pause a consumer), and afterwards every stream's configuration and contents and every
consumer's configuration are checked unchanged: nothing was written.

The design is written out here, on purpose not computed by the code under test; only the names come from
the manifest (a partition consumer's name from ebbtide.broker.partitions). A second test reads the
grants users.py writes into server.conf and fails for any grant that no probe here exercises: a new grant
comes with its probe and its line in the design.
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
from ebbtide.broker.names import lane_holdings_subject
from ebbtide.broker.partitions import consumer_names
from ebbtide.broker.users import ADMIN_USER, OBSERVER_USER, SCALER_USER, AuthBundle, write_bundle
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.subjects import keyed_subject
from tests.conftest import REPO, manifest_copy
from tests.nats_subjects import subject_matches

INGRESS = "ingress"
OUTSIDE = "OUTSIDE"  # a stream (and consumer `spy`) the manifest does not know
ROGUE = "ROGUE"  # a stream nobody created
# Rollouts (issue 21): the records every host watches, the candidates' bytes, the shadow samples.
ROLLOUTS, MODULES, SHADOW = "KV_ebbtide-rollouts", "OBJ_ebbtide-modules", "SHADOW"
# A consumer on each (made here by admin, as another client of these streams leaves one): no function may touch it.
WATCHERS = ((ROLLOUTS, "watcher"), (MODULES, "reader"))
STREAM_OPERATIONS = (
    "STREAM.CREATE",
    "STREAM.UPDATE",
    "STREAM.DELETE",
    "STREAM.PURGE",
    "STREAM.INFO",
    "STREAM.MSG.GET",
    "STREAM.MSG.DELETE",
    "STREAM.SNAPSHOT",
    "STREAM.RESTORE",
    "STREAM.LEADER.STEPDOWN",
    "DIRECT.GET",
    "CONSUMER.CREATE",  # ephemeral
    "CONSUMER.NAMES",
    "CONSUMER.LIST",
)
CONSUMER_OPERATIONS = (
    "CONSUMER.CREATE",
    "CONSUMER.CREATE+filter",  # $JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter subject>
    "CONSUMER.DURABLE.CREATE",
    "CONSUMER.DELETE",
    "CONSUMER.INFO",
    "CONSUMER.MSG.NEXT",
    "CONSUMER.PAUSE",
    "CONSUMER.UNPIN",  # a pinned lane's holder hands it over (ordered functions)
    "CONSUMER.LEADER.STEPDOWN",
)
ACCOUNT_OPERATIONS = ("INFO", "STREAM.NAMES", "STREAM.LIST")
DESTRUCTIVE = ("STREAM.DELETE", "CONSUMER.DELETE")  # admin's row runs these last
MANIFESTS = {"reference": REPO / "ebbtide.toml", "ordered": REPO / "deploy" / "ordered" / "ebbtide.toml"}


# -- the design ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """What each user may do, for one manifest. Names from the manifest; the rules in the methods."""

    functions: tuple[str, ...]
    buckets: tuple[str, ...]
    triggers: dict[str, str]  # function -> trigger
    publishes: dict[str, tuple[str, ...]]  # function -> its publish allowlist
    kv: dict[str, tuple[str, ...]]  # function -> its buckets
    consumers: dict[str, tuple[str, ...]]  # function -> its consumers probed (its own; of an ordered one, two partitions too)
    all_consumers: dict[str, tuple[str, ...]]  # function -> every consumer it reads
    ordered: tuple[str, ...]  # the ordered triggers
    entries: tuple[str, ...]  # triggers no function publishes to: where ingress feeds the pipeline

    @classmethod
    def of(cls, manifest: LoadedManifest) -> Design:
        spec = manifest.spec
        functions = tuple(spec.functions)
        published = [s for fn in spec.functions.values() for s in fn.publish]
        every = {f: tuple(consumer_names(manifest, f)) for f in functions}
        return cls(
            functions=functions,
            buckets=tuple(spec.kv),
            triggers={f: fn.trigger for f, fn in spec.functions.items()},
            publishes={f: tuple(fn.publish) for f, fn in spec.functions.items()},
            kv={f: tuple(fn.kv) for f, fn in spec.functions.items()},
            consumers={
                f: tuple(dict.fromkeys([names[-1], names[0], names[-2] if len(names) > 1 else names[0]]))
                for f, names in every.items()
            },
            all_consumers=every,
            ordered=tuple(manifest.ordered_triggers()),
            entries=tuple(fn.trigger for fn in spec.functions.values() if fn.trigger not in published),
        )

    # The names probed.
    @property
    def kv_streams(self) -> tuple[str, ...]:
        return tuple(f"KV_{bucket}" for bucket in self.buckets)

    @property
    def streams(self) -> tuple[str, ...]:
        return ("ORDERS", "DLQ", *self.kv_streams, ROLLOUTS, MODULES, SHADOW, OUTSIDE, ROGUE)

    @property
    def kv_readers(self) -> tuple[tuple[str, str], ...]:
        """A consumer on each outbox's stream: what a KV client's keys or watch leaves (made here by admin)."""
        return tuple((stream, "reader") for stream in self.kv_streams)

    @property
    def probed_consumers(self) -> tuple[tuple[str, str], ...]:
        own = [("ORDERS", c) for f in self.functions for c in self.consumers[f]]
        return (*own, *WATCHERS, *self.kv_readers, (OUTSIDE, "spy"))

    @property
    def users(self) -> tuple[str, ...]:
        return (*self.functions, INGRESS, OBSERVER_USER, SCALER_USER, ADMIN_USER)

    def keyed(self, subject: str) -> list[str]:
        """A subject, and for an ordered trigger its keyed form (`<trigger>.<key>`) and a subject one token
        longer (`<trigger>.<partition>.<key>`, where an earlier ebbtide stored them), which nobody may publish to."""
        if subject not in self.ordered:
            return [subject]
        return [subject, keyed_subject(subject, "k1"), f"{subject}.0.k1"]

    @property
    def subjects(self) -> tuple[str, ...]:
        """Every subject published to and subscribed to: the pipeline's, the outboxes, the dead letters, the
        status reports, the rollout records and samples, every probed consumer's acks, one outside."""
        pipeline = sorted(
            {s for t in self.triggers.values() for s in self.keyed(t)}
            | {s for ps in self.publishes.values() for p in ps for s in self.keyed(p)}
        )
        return (
            *pipeline,
            *(f"$KV.{bucket}.probe" for bucket in self.buckets),
            *(f"dlq.{fn}" for fn in self.functions),
            *(f"ebbtide.status_reports.{fn}" for fn in self.functions),
            "ebbtide.status_reports-request",
            *(lane_holdings_subject(fn) for fn in self.functions),
            *(f"$KV.ebbtide-rollouts.{fn}" for fn in self.functions),
            *(f"ebbtide.shadow.{fn}.probe" for fn in self.functions),
            *(f"$JS.ACK.{stream}.{consumer}.1.1.1.1.0" for stream, consumer in self.probed_consumers),
            "outside.x",
        )

    @property
    def inboxes(self) -> tuple[str, ...]:
        return ("_INBOX.probe", *(f"_ebbtide_inbox.{user}.probe" for user in (*self.functions, OBSERVER_USER, SCALER_USER)))

    def stored_in(self, subject: str) -> str | None:
        prefixes = {
            "orders.": "ORDERS",
            "dlq.": "DLQ",
            "$KV.ebbtide-rollouts.": ROLLOUTS,
            "ebbtide.shadow.": SHADOW,
            "outside.": OUTSIDE,
            **{f"$KV.{bucket}.": f"KV_{bucket}" for bucket in self.buckets},
        }
        return next((stream for prefix, stream in prefixes.items() if subject.startswith(prefix)), None)

    # The rules.
    def api_allowed(self, user: str, subject: str) -> bool:
        """$JS.API.<operation>.<target>: functions read their own consumers and pull from them, and read messages
        of their trigger's stream (the age of the oldest unhandled one); observer reads
        the outboxes, the dead letters, the manifest's streams (`replay`) and the shadow samples; ingress
        nothing; admin everything."""
        if user == ADMIN_USER:
            return True
        if user in self.functions:
            # Following rollouts: read the records (direct gets) and the candidates' bytes (message gets) of
            # those two streams, their stream info; no consumer created there, none deleted, listed or changed.
            rollouts = {f"$JS.API.STREAM.INFO.{stream}" for stream in (ROLLOUTS, MODULES)}
            rollouts.add(f"$JS.API.STREAM.MSG.GET.{MODULES}")
            rollouts |= {
                f"$JS.API.DIRECT.GET.{ROLLOUTS}.$KV.ebbtide-rollouts.{fn}" for fn in self.functions
            }  # records are not secret
            stream = "ORDERS"
            # An ordered function's holder also unpins its own lanes when it hands them over.
            ops = ("INFO", "MSG.NEXT", "UNPIN") if self.triggers[user] in self.ordered else ("INFO", "MSG.NEXT")
            own = {f"$JS.API.CONSUMER.{op}.{stream}.{c}" for c in self.consumers[user] for op in ops}
            # The stored time of its oldest unhandled message (ebbtide_oldest_pending_seconds, issue 25): a
            # message get on its trigger's stream. Reading only: nothing of ORDERS can be changed through it.
            own.add(f"$JS.API.STREAM.MSG.GET.{stream}")
            return subject in own | rollouts
        if user == OBSERVER_USER:
            reads = {  # the rollout records too (`console`)
                f"$JS.API.STREAM.{op}.{stream}"
                for op in ("INFO", "MSG.GET")
                for stream in ("DLQ", "ORDERS", *self.kv_streams, SHADOW, ROLLOUTS)
            }
            direct = {f"$JS.API.DIRECT.GET.{stream}" for stream in self.kv_streams}
            direct |= {f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.1" for bucket in self.buckets}
            # What KV clients (nats-py, nats.js, the nats CLI) do to list keys, read history, watch: the
            # account's JetStream info, ordered consumers on the outboxes' streams (unnamed, or named with a
            # filter inside the bucket), their info. No consumer deleted, listed, paused or filtered outside.
            kv_clients = {"$JS.API.INFO", *(f"$JS.API.CONSUMER.CREATE.{stream}" for stream in self.kv_streams)}
            kv_clients |= {f"$JS.API.CONSUMER.CREATE.KV_{bucket}.observer-probe.$KV.{bucket}.probe" for bucket in self.buckets}
            kv_clients |= {f"$JS.API.CONSUMER.INFO.{stream}.{consumer}" for stream, consumer in self.kv_readers}
            return subject in reads | direct | kv_clients
        if user == SCALER_USER:  # the KEDA external scaler: every function's lag, from each of its consumers
            return subject in {f"$JS.API.CONSUMER.INFO.ORDERS.{c}" for f in self.functions for c in self.consumers[f]}
        return False

    def holdings(self, user: str) -> set[str]:
        """An ordered function's replicas announce the lanes they hold to one another (broker/partitioned_pull.py)."""
        return {lane_holdings_subject(user)} if self.triggers[user] in self.ordered else set()

    def publish_allowed(self, user: str, subject: str) -> bool:
        if user == ADMIN_USER:
            return True
        if user == INGRESS:
            return subject in {s for entry in self.entries for s in self.keyed(entry)[:2]}
        if user == OBSERVER_USER:
            return subject == "ebbtide.status_reports-request"
        if user == SCALER_USER:
            return False
        mine = {
            s for p in self.publishes[user] for s in self.keyed(p)[:2]
        }  # the keyed form of an ordered trigger, not the stored one
        mine |= {f"$KV.{bucket}.probe" for bucket in self.kv[user]}
        mine |= {f"dlq.{user}", f"ebbtide.status_reports.{user}", f"$KV.ebbtide-rollouts.{user}", f"ebbtide.shadow.{user}.probe"}
        mine |= self.holdings(user)
        mine |= {f"$JS.ACK.ORDERS.{c}.1.1.1.1.0" for c in self.consumers[user]}  # its own messages' acks, no one else's
        return subject in mine

    def subscribe_allowed(self, user: str, subject: str) -> bool:
        if user == ADMIN_USER:
            return True
        if user == INGRESS:
            return subject == "_INBOX.probe"
        if user == OBSERVER_USER:
            return subject in {
                *(f"$KV.{bucket}.probe" for bucket in self.buckets),
                "_ebbtide_inbox.observer.probe",
                *(f"ebbtide.status_reports.{fn}" for fn in self.functions),
            }
        if user == SCALER_USER:  # the triggers' bell: every function's trigger, keyed too, and its own replies
            return subject in {s for t in self.triggers.values() for s in self.keyed(t)[:2]} | {"_ebbtide_inbox.scaler.probe"}
        trigger = self.triggers[user]
        own = {*self.keyed(trigger)[:2], "ebbtide.status_reports-request", f"_ebbtide_inbox.{user}.probe", *self.holdings(user)}
        return subject in own | {f"$KV.ebbtide-rollouts.{user}"}  # its own rollout record's writes (the follower's bell)


# -- the server ---------------------------------------------------------------------------------------


@dataclass
class Setup:
    server: EmbeddedNats
    bundle: AuthBundle
    admin: NatsClient
    design: Design
    manifest: LoadedManifest


def manifest_for(kind: str, tmp_path: Path) -> LoadedManifest:
    """The reference manifest (a copy with its own ports), or the ordered one as shipped (only its streams,
    buckets and consumers are used: nothing is built or written beside it)."""
    if kind == "reference":
        path, _ = manifest_copy(tmp_path)
        return load_manifest(path)
    return load_manifest(MANIFESTS[kind])


@pytest.fixture(params=list(MANIFESTS))
async def setup(request: pytest.FixtureRequest, tmp_path: Path, reference_manifest) -> AsyncIterator[Setup]:  # type: ignore[no-untyped-def]
    manifest = manifest_for(request.param, tmp_path)
    design = Design.of(manifest)
    bundle = write_bundle(manifest, tmp_path / "auth")
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, config_file=bundle.server_config) as server:
        admin = await nats.connect(server.url, **bundle.admin().connect_options())
        try:
            js = admin.jetstream()
            await provision(js, manifest)
            await js.add_stream(name=OUTSIDE, subjects=["outside.>"])
            await js.add_consumer(OUTSIDE, api.ConsumerConfig(durable_name="spy", ack_policy=api.AckPolicy.EXPLICIT))
            for stream, consumer in (*WATCHERS, *design.kv_readers):  # as other clients of these streams leave them
                await js.add_consumer(
                    stream, api.ConsumerConfig(name=consumer, ack_policy=api.AckPolicy.NONE, inactive_threshold=3600)
                )
            entry = design.entries[0]
            for subject in (
                entry,
                design.keyed(entry)[:2][-1],  # with a key, when ordered
                design.triggers[design.functions[-1]],
                "dlq.distributor",
                "outside.x",
            ):
                await js.publish(subject, b'{"orderId": 1}')
            for bucket in design.buckets:
                await (await js.key_value(bucket)).put("1", b'{"orderId": 1}')
            await (await js.key_value("ebbtide-rollouts")).put("other", b"{}")  # a function writes its own key
            await (await js.object_store("ebbtide-modules")).put("probe", b"\x00asm")
            await js.publish("ebbtide.shadow.distributor.same", b"{}")
            yield Setup(server, bundle, admin, design, manifest)
        finally:
            await admin.drain()


def credentials(bundle: AuthBundle, user: str) -> NatsAuth:
    if user == ADMIN_USER:
        return bundle.admin()
    if user == OBSERVER_USER:
        return bundle.observer()
    if user == INGRESS:
        return bundle.ingress()
    if user == SCALER_USER:
        return bundle.scaler()
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


def api_requests(design: Design, user: str, before: Snapshot) -> Iterator[tuple[str, bytes]]:
    """(subject, body) of every operation. Refused ones carry a damaging body (if it went through, the
    state check would see it); admin's, which all go through, a harmless one (JetStream answers an error)."""
    harmless = user == ADMIN_USER
    for operation in ACCOUNT_OPERATIONS:
        yield f"$JS.API.{operation}", b""
    for stream in design.streams:
        config, (_, _, first_seq, _) = before.streams.get(
            stream, (api.StreamConfig(name=stream, subjects=["rogue.>"]), (0, 0, 1, 0))
        )
        shrunk = json.dumps({**config.as_dict(), "max_msgs": 1}).encode()
        mismatch = json.dumps({"name": "MISMATCH"}).encode()
        # The ephemeral create names an existing consumer of the stream where there is one: the server would
        # redefine it, so a refused one must not reach it (an allowed one is a function's on the rollout
        # streams, which creates a reader of its own).
        bodies = {
            "STREAM.CREATE": mismatch if harmless else shrunk,
            "STREAM.UPDATE": mismatch if harmless else shrunk,
            "STREAM.DELETE": b"",
            "STREAM.PURGE": json.dumps({"keep": 1_000_000} if harmless else {}).encode(),
            "STREAM.INFO": b"",
            "STREAM.MSG.GET": json.dumps({"seq": first_seq}).encode(),
            "STREAM.MSG.DELETE": json.dumps({"seq": 1 << 40 if harmless else first_seq}).encode(),
            "STREAM.SNAPSHOT": json.dumps({"deliver_subject": "" if harmless else "_INBOX.stolen"}).encode(),
            "STREAM.RESTORE": b"{}"
            if harmless
            else json.dumps({"config": {**config.as_dict(), "max_msgs": 1}, "state": {}}).encode(),
            "STREAM.LEADER.STEPDOWN": b"",
            "DIRECT.GET": json.dumps({"seq": first_seq}).encode(),
            "CONSUMER.CREATE": json.dumps(
                {"stream_name": "MISMATCH" if harmless else stream, "config": {"ack_policy": "none", "deliver_policy": "new"}}
            ).encode(),
            "CONSUMER.NAMES": b"",
            "CONSUMER.LIST": b"",
        }
        for operation in STREAM_OPERATIONS:
            if not (harmless and operation in DESTRUCTIVE):
                yield f"$JS.API.{operation}.{stream}", bodies[operation]
    # Direct gets by subject (the form KV clients use): the outboxes' keys, every function's rollout record.
    for bucket in design.buckets:
        yield f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.1", b""
    for fn in design.functions:
        yield f"$JS.API.DIRECT.GET.{ROLLOUTS}.$KV.ebbtide-rollouts.{fn}", b""
    # A KV client's watch of one key: a consumer it names, filtered inside the bucket (a reader of its own).
    for bucket in design.buckets:
        config = {
            "name": "observer-probe",
            "filter_subject": f"$KV.{bucket}.probe",
            "ack_policy": "none",
            "deliver_policy": "new",
        }
        body = json.dumps({"stream_name": f"KV_{bucket}", "config": config}).encode()
        yield f"$JS.API.CONSUMER.CREATE.KV_{bucket}.observer-probe.$KV.{bucket}.probe", body
    for stream, consumer in design.probed_consumers:
        redefined = {
            "stream_name": stream,
            "config": {"durable_name": consumer, "name": consumer, "ack_policy": "none", "deliver_policy": "new"},
        }
        filtered = {**redefined, "config": {**redefined["config"], "filter_subject": "probe.filter"}}  # type: ignore[dict-item]
        if harmless:
            redefined["config"] = filtered["config"] = {"durable_name": "MISMATCH", "name": "MISMATCH"}
        bodies = {
            "CONSUMER.CREATE": json.dumps(redefined).encode(),
            "CONSUMER.CREATE+filter": json.dumps(filtered).encode(),
            "CONSUMER.DURABLE.CREATE": json.dumps(redefined).encode(),
            "CONSUMER.DELETE": b"",
            "CONSUMER.INFO": b"",
            "CONSUMER.MSG.NEXT": json.dumps(
                {"batch": 1, "expires": 200_000_000}
            ).encode(),  # answered (408) even where a partition is busy
            "CONSUMER.PAUSE": json.dumps(
                {"pause_until": "2000-01-01T00:00:00Z" if harmless else "2100-01-01T00:00:00Z"}
            ).encode(),
            "CONSUMER.UNPIN": json.dumps({"group": "MISMATCH" if harmless else "holder"}).encode(),
            "CONSUMER.LEADER.STEPDOWN": b"",
        }
        for operation in CONSUMER_OPERATIONS:
            if not (harmless and operation in DESTRUCTIVE):
                if operation == "CONSUMER.CREATE+filter":
                    yield f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.probe.filter", bodies[operation]
                else:
                    yield f"$JS.API.{operation}.{stream}.{consumer}", bodies[operation]


async def test_each_user_may_do_exactly_what_the_design_says(setup: Setup) -> None:
    design = setup.design
    for user in design.users:
        await _check_user(setup, design, user)


async def _check_user(setup: Setup, design: Design, user: str) -> None:
    before = await snapshot(setup.admin)
    assert set(before.streams) == set(design.streams) - {ROGUE}
    auth = credentials(setup.bundle, user)
    probe = await Probe(auth.inbox_prefix).connect(setup.server.url, auth)
    wrong: list[str] = []
    try:
        for subject, body in api_requests(design, user, before):
            allowed = await probe.request(subject, body)
            if allowed != design.api_allowed(user, subject):
                wrong.append(f"{subject}: {'allowed' if allowed else 'refused'}")
        for subject in (*design.subjects, *design.inboxes):
            if await probe.subscribe(subject) != design.subscribe_allowed(user, subject):
                wrong.append(f"subscribe {subject}: {'refused' if design.subscribe_allowed(user, subject) else 'allowed'}")
        published: dict[str, int] = {}
        for subject in design.subjects:
            allowed = await probe.publish(subject)
            if allowed != design.publish_allowed(user, subject):
                wrong.append(f"publish {subject}: {'allowed' if allowed else 'refused'}")
            if allowed and (stream := design.stored_in(subject)) is not None:
                published[stream] = published.get(stream, 0) + 1
        assert not wrong, f"{user}, against the design:\n  " + "\n  ".join(wrong)

        after = await snapshot(setup.admin)
        if user == ADMIN_USER:
            await _admin_deletes(design, probe, after, setup.admin)
            return
        # Nothing written but the allowed publishes: same streams, settings, consumers; contents grown by those alone.
        assert set(after.streams) == set(before.streams)
        for stream, (config, (messages, _, first_seq, last_seq)) in before.streams.items():
            config_after, (messages_after, _, first_after, last_after) = after.streams[stream]
            assert config_after == config, stream
            grown = published.get(stream, 0)
            assert (messages_after, first_after, last_after) == (messages + grown, first_seq, last_seq + grown), (user, stream)
        # Observer's ephemeral consumers on the outboxes' streams are reads (a KV client's keys or watch); every
        # other consumer is as it was.
        readable = design.kv_streams if user == OBSERVER_USER else ()
        new_readers = {
            stream: set(after.consumers.get(stream, {})) - set(before.consumers.get(stream, {})) for stream in after.consumers
        }
        assert not any(names for stream, names in new_readers.items() if stream not in readable), (user, new_readers)
        for stream in readable:
            for name in new_readers.get(stream, ()):
                del after.consumers[stream][name]
        assert after.consumers == before.consumers, user
    finally:
        await probe.close()


async def _admin_deletes(design: Design, probe: Probe, before: Snapshot, admin: NatsClient) -> None:
    """Admin's destructive operations, last: each goes through and does what it says."""
    for stream, consumer in design.probed_consumers:
        assert await probe.request(f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", b"")
    for stream in before.streams:
        assert await probe.request(f"$JS.API.STREAM.DELETE.{stream}", b"")
    assert await admin.jetstream().streams_info() == []


# -- every grant has its probe --------------------------------------------------------------------------


def written_grants(bundle: AuthBundle, design: Design) -> dict[str, dict[str, list[str]]]:
    """user -> {"publish": [...], "subscribe": [...]} as server.conf holds them (users known by their key)."""
    text = bundle.server_config.read_text()
    users = json.loads(text[text.index("authorization ") + len("authorization ") :])["users"]
    by_key = {}
    for user in (*design.functions, OBSERVER_USER, SCALER_USER, ADMIN_USER):
        seed = bytearray(bundle.seed_file(user).read_bytes().strip())
        by_key[nkeys.from_seed(seed).public_key.decode()] = user
    grants = {}
    for entry in users:
        user = by_key[entry["nkey"]] if "nkey" in entry else entry["user"]
        permissions = entry.get("permissions")
        if permissions is None:
            assert user == ADMIN_USER, f"{user} has no permissions: everything"
            continue
        grants[user] = {kind: permissions[kind]["allow"] for kind in ("publish", "subscribe")}
    assert set(grants) == set(design.users) - {ADMIN_USER}, sorted(grants)
    return grants


@pytest.mark.parametrize("kind", list(MANIFESTS))
def test_every_grant_users_py_writes_is_probed_by_the_matrix(tmp_path: Path, kind: str) -> None:
    """Each subject pattern of each user's grants (server.conf, as written) matches a subject the matrix
    probes and expects allowed for that user: a grant added to users.py without a probe (and a line in the
    design above) fails here."""
    manifest = load_manifest(MANIFESTS[kind])
    design = Design.of(manifest)
    bundle = write_bundle(manifest, tmp_path / "auth")
    probe_subjects = [subject for subject, _ in api_requests(design, "any", Snapshot())] + list(design.subjects)
    # The matrix probes an ordered function's first and last partition consumers: a grant on another
    # partition is the same grant with another index, and is covered by the probes of the first.
    stand_in = {
        name: design.consumers[fn][1]
        for fn in design.functions
        for name in design.all_consumers[fn]
        if name not in design.consumers[fn]
    }

    def probed_form(pattern: str) -> str:
        return ".".join(stand_in.get(token, token) for token in pattern.split("."))

    unprobed = []
    for user, grants in written_grants(bundle, design).items():
        for pattern in map(probed_form, grants["publish"]):
            if not any(
                subject_matches(pattern, s) and (design.api_allowed(user, s) or design.publish_allowed(user, s))
                for s in probe_subjects
            ):
                unprobed.append(f"{user} publish {pattern}")
        for pattern in map(probed_form, grants["subscribe"]):
            if not any(
                subject_matches(pattern, s) and design.subscribe_allowed(user, s) for s in (*design.subjects, *design.inboxes)
            ):
                unprobed.append(f"{user} subscribe {pattern}")
    assert not unprobed, f"{kind}: grants no probe of the matrix exercises:\n  " + "\n  ".join(unprobed)
