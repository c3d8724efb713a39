"""A holder whose lease lapsed while the server still pinned it (its event loop starved: a CPU-starved
process, a long guest call) must not run again what it already carried out: on a real nats-server, with
the real host and a real Wasm guest, the host's event loop is held (as a starved process's is) right after
it published a message's effect, from the lane's last pull request to four fifths of the pin timeout past
it: past the holder's lease (two thirds), short of the server's pin timeout. The output stream's duplicate
window is shorter than that stall, so an effect published again is stored again.

Before the fix the holder gave the lane up on the lapsed lease, did not ack, handed the message back and ran
it again when it came back: the effect stored twice (and, in a bench at load 25, 416 outbox writes out of
30,000 repeated). Now it asks the server whether its pin survived and acks: one effect, no redelivery.
"""

from __future__ import annotations

import time
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.partitions import partition_consumer, pin_timeout_s
from ebbtide.host import Host
from ebbtide.manifest import parse_manifest
from tests.conftest import chaos_manifest, provision_for, read_stream, wait_until

ACK_WAIT_S = 6.0  # the lane's pin timeout too (broker/partitions.pin_timeout_s)
STALL_UNTIL = 0.8  # of the pin timeout after the lane's last pull request: past the lease (2/3), short of the pin


async def test_a_holder_starved_past_its_lease_but_not_its_pin_acks_what_it_carried_out(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path, 'order_by = "k"\n', ack_wait_s=ACK_WAIT_S)
    text = manifest.path.read_text().replace(
        'retention = "workqueue"', 'retention = "workqueue"\npartitions = 1\nduplicate_window_s = 0.5'
    )
    manifest.path.write_text(text)
    manifest = parse_manifest(text, manifest.path)
    pin_s = pin_timeout_s(manifest.function("chaos"))
    lane = partition_consumer("chaos", 0)

    # What goes over the wire, in the order the server passed it on, seen from the host's own event loop (the
    # test runs the host in-process): the lane's bids and renewals, then the first effect.
    last_request_at = [0.0]
    stalled: list[float] = []

    async def on_wire(msg: Msg) -> None:
        if msg.subject == f"$JS.API.CONSUMER.MSG.NEXT.TEST.{lane}":
            last_request_at[0] = time.monotonic()
        elif msg.subject == "test.out" and not stalled:  # its confirmation and the input's ack are still to come
            stall_s = last_request_at[0] + STALL_UNTIL * pin_s - time.monotonic()
            stalled.append(stall_s)
            time.sleep(stall_s)  # the whole event loop held, as a starved process's is

    await provision_for(manifest, nats_server.url)
    await nc.subscribe(">", cb=on_wire)  # one subscription: its messages come in the order the server sent them
    js = nc.jetstream()
    async with Host(manifest, nats_server.url):
        await wait_until(lambda: last_request_at[0] > 0, timeout=10)
        await js.publish("in.chaos.k1", b"once")

        async def settled() -> bool:
            info = await js.consumer_info("TEST", lane)
            return bool(stalled) and info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(settled, timeout=5 * pin_s)
        info = await js.consumer_info("TEST", lane)
    assert stalled and stalled[0] > 0, stalled  # held until past the lease: 4/5 of the pin timeout after the last request
    outputs = await read_stream(nc, "TEST", "test.out", expected=1)
    assert [m.data for m in outputs] == [b"once"]  # carried out once
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == 1, info  # never handed back, never run again
