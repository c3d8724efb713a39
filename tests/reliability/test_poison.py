"""Poison messages (~10 % of the run, every kind of bad input) mixed into the good ones.

Every good order is stored exactly once; every poison message is dead-lettered exactly once, with its
original payload and a reason, and never reaches an outbox.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.headers import H_ERROR, H_FUNCTION, H_ORIGINAL_MSG_ID, H_ORIGINAL_SIZE, H_ORIGINAL_SUBJECT, H_REASON
from ebbtide.host import Host
from ebbtide.launch import running
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import backlog, manifest_copy, provision_for
from tests.reliability.conftest import (
    ORDERS_N,
    Outbox,
    Report,
    Row,
    account,
    connect_client,
    expected_outbox,
    finished_run,
    publish_reliably,
    run_complete,
)

SERVER_MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


def _order(rng: random.Random, **overrides: object) -> dict:
    order = json.loads(encode_order(generate_orders(1, seed=rng.randrange(1 << 30), first_id=rng.randrange(1, 10**6))[0]))
    for key, value in overrides.items():
        if value is ...:
            del order[key]
        else:
            order[key] = value
    return order


def _dump(order: object) -> bytes:
    return json.dumps(order).encode()


# kind -> (make a payload from an rng, the Ebbtide-Reason, a phrase the Ebbtide-Error must contain)
POISON = {
    "truncated-json": (lambda r: _dump(_order(r))[: r.randrange(1, 60)], "rejected", "malformed-json"),
    "trailing-garbage": (lambda r: _dump(_order(r)) + b" }{", "rejected", "malformed-json"),
    "deep-nesting": (lambda r: b"[" * 5000 + b"]" * 5000, "rejected", "malformed-json"),
    "invalid-utf8": (
        lambda r: _dump(_order(r, description="lab")).replace(b'"lab"', b'"l\xff\xfeb"'),
        "rejected",
        "malformed-json",
    ),
    "binary-garbage": (lambda r: b"\xff" + r.randbytes(r.randrange(16, 4096)), "rejected", "malformed-json"),
    "empty": (lambda r: b"", "rejected", "malformed-json"),
    "not-an-object": (lambda r: r.choice([b"[1, 2, 3]", b"null", b'"order"', b"42", b"true"]), "rejected", "malformed-json"),
    "duplicate-order-id": (
        lambda r: b'{"orderId": 1, "orderId": 2, "delivery": "Express", "items": [{"sku": "A"}]}',
        "rejected",
        "malformed-json",
    ),
    "missing-order-id": (lambda r: _dump(_order(r, orderId=...)), "rejected", "missing-order-id"),
    "string-order-id": (lambda r: _dump(_order(r, orderId=str(r.randrange(1, 10**6)))), "rejected", "invalid-order-id"),
    "float-order-id": (lambda r: _dump(_order(r, orderId=r.randrange(1, 10**6) + 0.5)), "rejected", "invalid-order-id"),
    "null-order-id": (lambda r: _dump(_order(r, orderId=None)), "rejected", "invalid-order-id"),
    "huge-order-id": (lambda r: _dump(_order(r, orderId=2**64 + r.randrange(10**6))), "rejected", "invalid-order-id"),
    "unknown-delivery": (
        lambda r: _dump(_order(r, delivery=r.choice(["Drone", "", "Expresss", "standard "]))),
        "rejected",
        "unknown-delivery",
    ),
    "missing-delivery": (lambda r: _dump(_order(r, delivery=...)), "rejected", "unknown-delivery"),
    "non-string-delivery": (
        lambda r: _dump(_order(r, delivery=r.choice([1, None, ["Express"]]))),
        "rejected",
        "unknown-delivery",
    ),
    "empty-items": (lambda r: _dump(_order(r, items=[])), "rejected", "no-items"),
    "missing-items": (lambda r: _dump(_order(r, items=...)), "rejected", "no-items"),
    "items-not-an-array": (lambda r: _dump(_order(r, items={"sku": "A"})), "rejected", "no-items"),
    # Over limits.max_payload (65536) but under the server's max_payload: the guest never sees it.
    "over-max-payload": (
        lambda r: _dump(_order(r, description="x" * r.randrange(66_000, 980_000))),
        "payload-too-large",
        "exceeds limits.max_payload",
    ),
}


def poison_messages(count: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    kinds = list(POISON)
    return [(kinds[i % len(kinds)], POISON[kinds[i % len(kinds)]][0](rng)) for i in range(count)]


async def test_poison_messages_mixed_into_good_ones(
    tmp_path: Path, reference_manifest: LoadedManifest, nats_server: EmbeddedNats, reliability_report: Report
) -> None:
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 2")
    manifest = load_manifest(path)
    good = generate_orders(ORDERS_N, seed=303)
    expected = expected_outbox(good)
    poison = poison_messages(max(len(POISON), ORDERS_N // 10), seed=304)
    assert all(len(payload) < SERVER_MAX_PAYLOAD - 4096 for _, payload in poison)
    messages = [(encode_order(o), o.order_guid) for o in good]
    messages += [(payload, f"poison-{i}-{kind}") for i, (kind, payload) in enumerate(poison)]
    random.Random(305).shuffle(messages)
    nc = await connect_client(nats_server.url)
    started = time.monotonic()
    try:
        await provision_for(manifest, nats_server.url)
        async with running(manifest, nats_server.url, "single"):
            stats = await publish_reliably(nc, INGRESS_SUBJECT, messages)
            await finished_run(nc, expected, len(poison), "every order stored and every poison message dead-lettered")
        outbox, letters = await account(nc, expected)  # the host stopped: nothing still on its way
        assert await backlog(nc) == 0
    finally:
        await nc.close()

    by_id: dict[str, list] = {}
    for letter in letters:
        by_id.setdefault(letter.headers.get(H_ORIGINAL_MSG_ID, "?"), []).append(letter)
    poison_ids = {f"poison-{i}-{kind}": (kind, payload) for i, (kind, payload) in enumerate(poison)}
    missing = set(poison_ids) - set(by_id)
    doubled = sum(len(v) - 1 for v in by_id.values())
    row = Row(
        "poison messages mixed in",
        stats.messages,
        outbox.stored,
        outbox.lost + len(missing),
        outbox.extra_writes + doubled,
        len(letters),
        time.monotonic() - started,
        f"{len(poison)} poison, {len(POISON)} kinds, publish retries {stats.retried}",
    )
    reliability_report.add(row)
    row.check(len(good), len(poison))
    outbox.check()
    assert not missing, sorted(missing)[:10]
    assert set(by_id) == set(poison_ids), sorted(set(by_id) - set(poison_ids))[:10]  # no good order dead-lettered
    assert doubled == 0 and len(letters) == len(poison)
    wrong = []
    for msg_id, (kind, payload) in poison_ids.items():
        letter = by_id[msg_id][0]
        _, reason, phrase = POISON[kind]
        ok = (
            (letter.data or b"") == payload  # nats-py gives None for an empty payload
            and letter.subject == "dlq.distributor"
            and letter.headers[H_FUNCTION] == "distributor"
            and letter.headers[H_ORIGINAL_SUBJECT] == INGRESS_SUBJECT
            and letter.headers[H_REASON] == reason
            and phrase in letter.headers[H_ERROR]
        )
        if not ok:
            wrong.append((kind, letter.headers.get(H_REASON), letter.headers.get(H_ERROR), len(letter.data or b""), len(payload)))
    assert not wrong, wrong[:10]


async def test_poison_just_under_the_server_max_payload(
    tmp_path: Path, reference_manifest: LoadedManifest, nats_server: EmbeddedNats, reliability_report: Report
) -> None:
    """An input that fits the server's max_payload with its own headers, but not with a dead letter's."""
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 2")
    manifest = load_manifest(path)
    good = generate_orders(max(20, ORDERS_N // 20), seed=306)
    expected = expected_outbox(good)
    nc = await connect_client(nats_server.url)
    server_max = nc.max_payload  # the limit the server announced (1 MiB by default)
    near = [
        b"x" * (server_max - 256),
        b'{"orderId": 1, "delivery": "Express", "items": [], "pad": "' + b"y" * (server_max - 400) + b'"}',
    ]
    messages = [(encode_order(o), o.order_guid) for o in good]
    half = len(messages) // 2
    messages[half:half] = [(payload, f"near-limit-{i}") for i, payload in enumerate(near)]
    started = time.monotonic()
    letters: list = []
    outbox: Outbox | None = None
    try:
        await provision_for(manifest, nats_server.url)
        async with running(manifest, nats_server.url, "single") as host:
            assert isinstance(host, Host)
            await publish_reliably(nc, INGRESS_SUBJECT, messages)
            deadline = time.monotonic() + 30
            while not await run_complete(nc, expected, dead_letters=len(near)):
                # Fail at once rather than at the deadline: a closed client never comes back.
                assert not host.nc.is_closed, f"the server closed the host's connection: {host.nc.last_error!r}"
                assert time.monotonic() < deadline, "run not complete within 30 s"
                await asyncio.sleep(0.1)
            assert host.nc.is_connected
        outbox, letters = await account(nc, expected)  # the host stopped: nothing still on its way
    finally:
        if outbox is None:  # failed part-way: account for what the server holds now
            outbox, letters = await account(nc, expected)
        ids = [letter.headers.get(H_ORIGINAL_MSG_ID) for letter in letters]
        row = Row(
            "poison just under the server max_payload",
            len(messages),
            outbox.stored,
            outbox.lost + sum(1 for i in range(len(near)) if f"near-limit-{i}" not in ids),
            outbox.extra_writes + len(ids) - len(set(ids)),
            len(letters),
            time.monotonic() - started,
            f"{len(near)} inputs of ~{server_max // 1024} KiB",
        )
        reliability_report.add(row)
        await nc.close()
    row.check(len(good), len(near))
    outbox.check()
    assert sorted(ids) == [f"near-limit-{i}" for i in range(len(near))] and len(letters) == len(near)
    for letter in letters:
        original = near[int(letter.headers[H_ORIGINAL_MSG_ID].rsplit("-", 1)[1])]
        assert letter.headers[H_REASON] == "payload-too-large" and "exceeds limits.max_payload" in letter.headers[H_ERROR]
        # The whole payload cannot fit next to the headers: a prefix of it, at least, must be kept.
        assert letter.data and original.startswith(letter.data)
        assert letter.headers[H_ORIGINAL_SIZE] == str(len(original))
