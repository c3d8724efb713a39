"""Misbehaving guests mixed into normal traffic (tests/guests/chaos.wat).

Traps, runaway loops, memory bombs, garbage output, unknown statuses, forbidden effects, retries and
rejects, interleaved with normal payloads: each normal payload reaches test.out exactly once, each bad
one is dead-lettered exactly once with the right reason, and the host keeps running.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.headers import H_DELIVERY_COUNT, H_ERROR, H_ORIGINAL_MSG_ID, H_REASON
from ebbtide.host import Host
from tests.conftest import chaos_manifest, provision_for, read_stream
from tests.reliability.conftest import (
    ORDERS_N,
    Report,
    Row,
    connect_client,
    eventually,
    publish_reliably,
    read_dead_letters,
)

MAX_DELIVER = 3  # chaos_manifest's retry.max_deliver

# first byte -> (Ebbtide-Reason, phrase in Ebbtide-Error, deliveries before the dead letter, guest fault kind)
BAD = {
    b"T": ("retries-exhausted", "trap", MAX_DELIVER, "trap"),
    b"L": ("retries-exhausted", "timeout", MAX_DELIVER, "timeout"),
    b"M": ("retries-exhausted", "memory-limit", MAX_DELIVER, "memory-limit"),
    b"G": ("retries-exhausted", "invalid-output", MAX_DELIVER, "invalid-output"),
    b"B": ("retries-exhausted", "invalid-output", MAX_DELIVER, "invalid-output"),
    b"R": ("retries-exhausted", "guest asked to retry", MAX_DELIVER, None),
    b"F": ("effect-refused", "'not.allowed' is not allowed", 1, None),
    b"X": ("rejected", "refused by the chaos guest", 1, None),
    b"x": ("payload-too-large", "exceeds limits.max_payload (4096)", 1, None),  # 5000 bytes; the guest never runs
}


def bad_payload(kind: bytes, i: int) -> bytes:
    payload = kind + b"-bad-%d" % i
    return payload + b"." * (5000 - len(payload)) if kind == b"x" else payload


async def test_misbehaving_guests_mixed_into_normal_traffic(
    tmp_path: Path, nats_server: EmbeddedNats, reliability_report: Report
) -> None:
    manifest = chaos_manifest(tmp_path, ack_wait_s=2.0)
    normal = [b"n-%d" % i for i in range(ORDERS_N)]
    kinds = list(BAD)
    bad = {f"bad-{i}": bad_payload(kinds[i % len(kinds)], i) for i in range(max(len(kinds), ORDERS_N // 10))}
    messages = [(payload, f"normal-{i}") for i, payload in enumerate(normal)] + [(p, msg_id) for msg_id, p in bad.items()]
    random.Random(404).shuffle(messages)
    nc = await connect_client(nats_server.url)
    js = nc.jetstream()
    started = time.monotonic()
    try:
        await provision_for(manifest, nats_server.url)
        async with Host(manifest, nats_server.url) as host:
            await publish_reliably(nc, "in.chaos", messages)

            async def complete() -> bool:
                info = await js.consumer_info("TEST", "chaos")
                return (
                    info.num_pending == 0
                    and info.num_ack_pending == 0
                    and (await js.stream_info("DLQ")).state.messages >= len(bad)
                )

            await eventually(complete, what="every chaos input settled")

            # The host is still running: both instances up, and a new message goes through.
            pool = host.pools["chaos"]
            assert pool.instances == 2 and all(not w.done for w in pool._workers)
            assert not host.controllers["chaos"]._task.done()
            await publish_reliably(nc, "in.chaos", [(b"n-after-the-chaos", "after")])
            await read_stream(nc, "TEST", "test.out", expected=len(normal) + 1, timeout=10)
            faults = dict(pool.stats.guest_faults)
        # Read once the host stopped: every effect it will ever publish is stored by now.
        out = await read_stream(nc, "TEST", "test.out")
        letters = await read_dead_letters(nc)
    finally:
        await nc.close()

    outputs = [m.data for m in out if m.data != b"n-after-the-chaos"]
    by_id: dict[str, list] = {}
    for letter in letters:
        by_id.setdefault(letter.headers.get(H_ORIGINAL_MSG_ID, "?"), []).append(letter)
    lost = len(set(normal) - set(outputs)) + len(set(bad) - set(by_id))
    doubled = (len(outputs) - len(set(outputs))) + sum(len(v) - 1 for v in by_id.values())
    row = Row(
        "misbehaving guests mixed in",
        len(messages),
        len(set(outputs) & set(normal)),
        lost,
        doubled,
        len(letters),
        time.monotonic() - started,
        f"{len(bad)} bad ({len(kinds)} kinds), faults {sum(faults.values())}",
    )
    reliability_report.add(row)
    row.check(len(normal), len(bad))

    assert sorted(outputs) == sorted(normal)  # every normal payload exactly once, nothing bad got through
    assert [m.data for m in out].count(b"n-after-the-chaos") == 1
    assert set(by_id) == set(bad) and len(letters) == len(bad)
    wrong = []
    for msg_id, payload in bad.items():
        letter = by_id[msg_id][0]
        reason, phrase, deliveries, _ = BAD[payload[:1]]
        if not (
            letter.data == payload
            and letter.subject == "dlq.chaos"
            and letter.headers[H_REASON] == reason
            and phrase in letter.headers[H_ERROR]
            and letter.headers[H_DELIVERY_COUNT] == str(deliveries)
        ):
            wrong.append((payload[:12], letter.headers[H_REASON], letter.headers[H_ERROR], letter.headers[H_DELIVERY_COUNT]))
    assert not wrong, wrong[:10]
    # Each faulting delivery was counted once, by kind (no delivery beyond retry.max_deliver).
    expected_faults: dict[str, int] = {}
    for payload in bad.values():
        kind = BAD[payload[:1]][3]
        if kind:
            expected_faults[kind] = expected_faults.get(kind, 0) + MAX_DELIVER
    assert faults == expected_faults
