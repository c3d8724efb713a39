"""The pool's guard rails, against a real nats-server and real guests (tests/guests/chaos.wat and small
guests written here): retry backoff as the server applies it, the first-failure time of a dead letter, a
dead letter that cannot be stored, the host-error path, a spoofed ingress header, an input larger than
the guest's buffer."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import wasmtime
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.broker.headers import H_DELIVERY_COUNT, H_ERROR, H_FAILED_AT, H_FIRST_FAILED_AT, H_INGRESS_AT, H_REASON
from ebbtide.broker.provisioning import ensure_stream, stream_configs
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, parse_manifest
from tests.conftest import chaos_manifest, read_stream, wait_until

BACKOFF_MS = [300, 1200]
MAX_DELIVER = 4


async def provisioned(nc: NatsClient, manifest: LoadedManifest) -> LoadedManifest:
    """Streams and consumer created as an operator would (`ebbtide provision`): hosts need not be allowed to."""
    await provision(nc.jetstream(), manifest)
    return manifest


def manifest_with(tmp_path: Path, *replacements: tuple[str, str], extra: str = "") -> LoadedManifest:
    """The chaos manifest (conftest) with some of its settings replaced."""
    manifest = chaos_manifest(tmp_path, extra)
    text = manifest.path.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    manifest.path.write_text(text)
    return parse_manifest(text, manifest.path)


@dataclass
class NakWatch:
    """What the server and the wire say about the naks of function `chaos`: the server's advisory per nak
    (its timestamp, the delivery it ends) and each nak as the host sent it (its requested delay)."""

    advisories: list[tuple[int, int, datetime]] = field(default_factory=list)  # (stream seq, deliveries, server time)
    requested: list[tuple[int, int, dict[str, int]]] = field(default_factory=list)  # (stream seq, delivered, nak body)

    async def start(self, nc: NatsClient) -> NakWatch:
        async def on_advisory(msg: Msg) -> None:
            event = json.loads(msg.data)
            self.advisories.append((event["stream_seq"], event["deliveries"], _server_time(event["timestamp"])))

        async def on_ack(msg: Msg) -> None:
            if msg.data.startswith(b"-NAK"):
                tokens = msg.subject.split(".")  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...
                body = json.loads(msg.data[4:] or b"{}")
                self.requested.append((int(tokens[5]), int(tokens[4]), body))

        await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.TEST.chaos", cb=on_advisory)
        await nc.subscribe("$JS.ACK.TEST.chaos.>", cb=on_ack)
        await nc.flush()
        return self

    def of(self, sequence: int) -> list[tuple[int, datetime]]:
        return sorted((deliveries, at) for seq, deliveries, at in self.advisories if seq == sequence)


def _server_time(stamp: str) -> datetime:
    """An RFC 3339 time with nanoseconds, as the server writes it (Python parses microseconds)."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction + '000000')[:6]}+00:00")


def _header_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_retry_backoff_is_applied_by_the_server_and_the_dead_letter_says_when_it_first_failed(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = manifest_with(
        tmp_path,
        (
            "retry = { max_deliver = 3, backoff_ms = [50, 100] }",
            f"retry = {{ max_deliver = {MAX_DELIVER}, backoff_ms = {BACKOFF_MS} }}",
        ),
    )
    watch = await NakWatch().start(nc)
    js = nc.jetstream()
    async with Host(await provisioned(nc, manifest), nats_server.url):
        retried = (await js.publish("in.chaos", b"R-retry")).seq
        rejected = (await js.publish("in.chaos", b"X-reject")).seq
        dead = {m.headers["Ebbtide-Original-Sequence"]: m for m in await read_stream(nc, "DLQ", "dlq.chaos", expected=2)}

    # The host asked for the manifest's delays, the n-th redelivery after backoff_ms[n-1] (the last repeats).
    asked = sorted((delivered, body.get("delay")) for seq, delivered, body in watch.requested if seq == retried)
    assert asked == [(1, 300_000_000), (2, 1_200_000_000), (3, 1_200_000_000)]
    # ... and the server applied them: each nak (the end of a delivery) came at least that long after the last.
    naks = watch.of(retried)
    assert [deliveries for deliveries, _ in naks] == [1, 2, 3]
    gaps = [(later - earlier).total_seconds() for (_, earlier), (_, later) in zip(naks, naks[1:])]
    assert gaps[0] >= 0.3 and gaps[1] >= 1.2, gaps
    letter = dead[str(retried)]
    assert (letter.headers[H_REASON], letter.headers[H_DELIVERY_COUNT]) == ("retries-exhausted", str(MAX_DELIVER))
    assert (letter.time - naks[-1][1]).total_seconds() >= 1.2  # the 4th delivery also waited its backoff

    # First-Failed-At is the first failure (the first delivery), not the last one.
    first, last = _header_time(letter.headers[H_FIRST_FAILED_AT]), _header_time(letter.headers[H_FAILED_AT])
    assert last - first >= sum([0.3, 1.2, 1.2]) - 0.002  # millisecond timestamps
    assert abs(first - naks[0][1].timestamp()) < 1.0
    # A message that never failed transiently has no first failure to report.
    assert dead[str(rejected)].headers[H_REASON] == "rejected" and H_FIRST_FAILED_AT not in dead[str(rejected)].headers


async def test_a_dead_letter_that_cannot_be_stored_keeps_the_input(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path)
    watch = await NakWatch().start(nc)
    js = nc.jetstream()
    async with Host(await provisioned(nc, manifest), nats_server.url) as host:
        await js.delete_stream("DLQ")  # dead letters now have nowhere to go (503 no responders)
        sequence = (await js.publish("in.chaos", b"X-reject")).seq
        await wait_until(lambda: len(watch.of(sequence)) >= 3)  # handed back again and again, never acked
        assert (await js.stream_info("TEST")).state.messages == 1
        assert host.pools["chaos"].stats.dead_lettered == 0

        await ensure_stream(js, next(c for c in stream_configs(manifest) if c.name == "DLQ"))
        [letter] = await read_stream(nc, "DLQ", "dlq.chaos", expected=1)
        await wait_until(lambda: host.pools["chaos"].stats.dead_lettered == 1)
        assert (await js.stream_info("TEST")).state.messages == 0  # acked only once its dead letter was stored
    assert letter.data == b"X-reject" and letter.headers[H_REASON] == "rejected"
    assert int(letter.headers[H_DELIVERY_COUNT]) >= 3


# A guest whose handle always traps and whose init refuses any configuration but the empty one ("{}", what
# the host passes for a function without `config`). The test gives the pool another configuration once its
# instance runs: from then on a faulted instance cannot be replaced, and the next delivery meets an
# unexpected error in the host (GuestInitError where an instance was expected). (It used a deadline baked
# into the guest, 4 s after the test began, read from the realtime clock: a host slower than that to start
# its instance failed the test; issue 27.)
REFUSING_WAT = """
(module
  (memory (export "memory") 3)
  (func (export "ebbtide_abi_version") (result i32) (i32.const 1))
  (func (export "ebbtide_input_ptr") (result i32) (i32.const 65536))
  (func (export "ebbtide_input_capacity") (result i32) (i32.const 32768))
  (func (export "ebbtide_output_ptr") (result i32) (i32.const 131072))
  (func (export "ebbtide_output_capacity") (result i32) (i32.const 65536))
  (func (export "ebbtide_init") (param $config_len i32) (result i32)
    (i32.store (i32.const 131072) (i32.const 0))
    (i32.gt_u (local.get $config_len) (i32.const 2)))
  (func (export "ebbtide_handle") (param i32 i32) (result i32) unreachable))
"""


async def test_an_unexpected_host_error_retries_the_message_and_the_worker_goes_on(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = manifest_with(
        tmp_path,
        ('module = "chaos"', 'module = "refusing"'),
        ("scale = { min = 2, max = 2 }", "scale = { min = 1, max = 1 }"),
        extra='\n[modules.refusing]\nsource = "unused"\n',
    )
    manifest.module_path("refusing").write_bytes(wasmtime.wat2wasm(REFUSING_WAT))
    watch = await NakWatch().start(nc)
    js = nc.jetstream()
    async with Host(await provisioned(nc, manifest), nats_server.url) as host:
        pool = host.pools["chaos"]
        await wait_until(lambda: pool.live_instances == 1)  # its one instance started, with the empty configuration
        pool.spec = replace(pool.spec, config_json=b'{"refused": true}')  # from now on, no instance starts
        first = (await js.publish("in.chaos", b"one")).seq
        await read_stream(nc, "DLQ", "dlq.chaos", expected=1)
        second = (await js.publish("in.chaos", b"two")).seq  # the worker survived the error and takes more
        letters = await read_stream(nc, "DLQ", "dlq.chaos", expected=2)
        stats = pool.stats
    assert stats.guest_faults == {"trap": 1} and stats.dead_lettered == 2
    by_sequence = {int(m.headers["Ebbtide-Original-Sequence"]): m.headers for m in letters}
    for sequence in (first, second):
        headers = by_sequence[sequence]
        assert headers[H_REASON] == "retries-exhausted" and headers[H_DELIVERY_COUNT] == "3"
        assert "last error: host error: GuestInitError(" in headers[H_ERROR], headers[H_ERROR]
        # Retried with the manifest's backoff like any transient failure, not dropped or redelivered at once.
        assert sorted((d, body.get("delay")) for s, d, body in watch.requested if s == sequence) == [
            (1, 50_000_000),
            (2, 100_000_000),
        ]


async def test_a_malformed_ingress_header_is_ignored(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    """Any client can send Ebbtide-Ingress-At: a value that is not a plain number is replaced by the
    input's own publish time, and never fails the message."""
    spoofed = ["²", "١٢٣", "-5", "12345678901234567890123", "soon", "4.2", "0x10"]
    js = nc.jetstream()
    async with Host(await provisioned(nc, chaos_manifest(tmp_path)), nats_server.url) as host:
        before = time.time_ns()
        for value in spoofed:
            await js.publish("in.chaos", value.encode(), headers={H_INGRESS_AT: value})
        out = await read_stream(nc, "TEST", "test.out", expected=len(spoofed))
        after = time.time_ns()
        stats = host.pools["chaos"].stats
    assert sorted(m.data for m in out) == sorted(v.encode() for v in spoofed)
    for msg in out:
        carried = msg.headers[H_INGRESS_AT]
        assert carried.isascii() and carried.isdigit() and before - 1_000_000_000 <= int(carried) <= after, (msg.data, carried)
    assert (stats.processed, stats.retried, stats.dead_lettered) == (len(spoofed), 0, 0)


async def test_an_input_within_max_payload_but_over_the_guest_buffer_is_dead_lettered_at_once(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = manifest_with(tmp_path, ("max_payload = 4096", "max_payload = 60000"))
    capacity = 32768  # chaos.wat's input buffer, for subject and payload together
    fits = b"A" * (capacity - len("in.chaos"))
    js = nc.jetstream()
    async with Host(await provisioned(nc, manifest), nats_server.url):
        await js.publish("in.chaos", b"B" * 40_000)
        await js.publish("in.chaos", fits)
        [letter] = await read_stream(nc, "DLQ", "dlq.chaos", expected=1)
        [out] = await read_stream(nc, "TEST", "test.out", expected=1)
    assert out.data == fits
    assert (letter.headers[H_REASON], letter.headers[H_DELIVERY_COUNT]) == ("payload-too-large", "1")
    assert "exceeds the guest's input buffer (32768)" in letter.headers[H_ERROR]
    assert letter.data == b"B" * 40_000
