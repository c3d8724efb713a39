"""`ebbtide shadow report` and `ebbtide replay` through the CLI, against a real nats-server with the
generated users (they read as the read-only `observer`), real Zig modules built into temporary folders.

- shadow report: samples published to a real SHADOW stream as hosts publish them (first N per verdict kept).
- replay --from-dlq: the pipeline dead-letters "Drone" orders; a candidate distributor that routes them
  shows exactly those as different and would now handle them.
- replay --stream: a candidate that routes Standard orders to orders.express shows exactly the Standard
  orders of the range as different.
- Neither writes anything: every stream's and consumer's state is unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from ebbtide import cli
from ebbtide.broker.access import ServerAccess, embedded_server
from ebbtide.build import build_module
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.rollout.compare import RecordedReply, Verdict, recorded
from ebbtide.rollout.samples import Sample, encode_sample, sample_subject
from ebbtide.rollout.stored import stream_inputs, stream_range
from ebbtide.runtime.abi import Publish, Status, encode_effects
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import REPO, backlog, manifest_copy, provision_for, wait_until
from tests.integration.test_dlq import drone_order

KEPT_PER_VERDICT = 3
DISTRIBUTOR = REPO / "functions" / "distributor" / "main.zig"
EXPRESS_TEST = 'if (kind.eqlIgnoreCase("express"))'
STANDARD_ROUTE = 'else if (kind.eqlIgnoreCase("standard"))\n        standard_subject'
# The fix: "Drone" orders go the express way too.
ACCEPTS_DRONES = DISTRIBUTOR.read_text().replace(
    EXPRESS_TEST, 'if (kind.eqlIgnoreCase("express") or kind.eqlIgnoreCase("drone"))'
)
# A change of routing for one delivery type: Standard orders go to orders.express.
REROUTES_STANDARD = DISTRIBUTOR.read_text().replace(
    STANDARD_ROUTE, 'else if (kind.eqlIgnoreCase("standard"))\n        express_subject'
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LoadedManifest, ServerAccess]]:
    """The reference manifest's embedded server with its generated users, as `ebbtide up` runs it."""
    assert ACCEPTS_DRONES != DISTRIBUTOR.read_text() != REROUTES_STANDARD
    monkeypatch.delenv("EBBTIDE_NATS_URL", raising=False)
    # cli.main, run in this process, passes its log format to the processes it starts through this variable:
    # set here, it is taken away again when the test ends.
    monkeypatch.setenv("EBBTIDE_LOG_FORMAT", "auto")
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    with embedded_server(manifest) as (_, access):
        yield manifest, access


def ebbtide(capsys: pytest.CaptureFixture[str], manifest: LoadedManifest, *args: str) -> tuple[int, str, str]:
    """The command run in this process (much faster than a child); its exit code, stdout and stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        code = cli.main(["-m", str(manifest.path), *args])
    finally:
        root.handlers[:], root.level = handlers, level  # main() sets up logging for a process of its own
    out, err = capsys.readouterr()
    return code, out, err


def candidate_source(tmp_path: Path, code: str) -> Path:
    folder = tmp_path / "candidate-source"
    folder.mkdir(exist_ok=True)
    (folder / "main.zig").write_text(code)
    return folder


def with_distributor_source(manifest: LoadedManifest, folder: Path) -> LoadedManifest:
    """The manifest as it reads once the distributor's source was edited (its built module still the old one)."""
    text = manifest.path.read_text().replace(f'source = "{DISTRIBUTOR.parent}"', f'source = "{folder}"')
    manifest.path.write_text(text)
    return load_manifest(manifest.path)


async def server_state(access: ServerAccess) -> dict[str, object]:
    """Every stream's counts and every consumer's position: what a reader must leave as it was."""
    nc = await nats.connect(access.url, **access.admin.connect_options())
    try:
        js = nc.jetstream()
        state: dict[str, object] = {}
        for info in await js.streams_info():
            s = info.state
            state[info.config.name] = (s.messages, s.first_seq, s.last_seq, s.consumer_count)
            for consumer in await js.consumers_info(info.config.name):
                state[f"{info.config.name}/{consumer.name}"] = (
                    consumer.delivered.stream_seq,
                    consumer.ack_floor.stream_seq,
                    consumer.num_pending,
                    consumer.num_ack_pending,
                )
        return state
    finally:
        await nc.close()


def test_shadow_report_shows_the_kept_samples_side_by_side(
    server: tuple[LoadedManifest, ServerAccess], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, access = server
    code, out, err = ebbtide(capsys, manifest, "shadow", "report", "distributor")
    assert (code, out) == (1, "")
    assert "the SHADOW stream does not exist" in err and "Traceback" not in err

    express = generate_orders(6, seed=4, express_share=1.0)
    live = [recorded((Status.OK, encode_effects([Publish("orders.express", encode_order(o))]))) for o in express]
    moved = [recorded((Status.OK, encode_effects([Publish("orders.standard", encode_order(o))]))) for o in express]

    async def publish_samples() -> list[bool]:
        nc = await nats.connect(access.url, **access.admin.connect_options())
        js = nc.jetstream()
        # As the rollout provisions it: the first N of each verdict stay, later ones are refused.
        await js.add_stream(
            StreamConfig(
                name="SHADOW",
                subjects=["ebbtide.shadow.>"],
                max_msgs_per_subject=KEPT_PER_VERDICT,
                discard=DiscardPolicy.NEW,
                discard_new_per_subject=True,
            )
        )
        stored = []
        samples = [
            *(
                Sample(
                    "distributor",
                    Verdict.DIFFERENT,
                    INGRESS_SUBJECT,
                    encode_order(o),
                    live[i],
                    moved[i],
                    "c" * 64,
                    time.time_ns(),
                    100 + i,
                )
                for i, o in enumerate(express[:5])
            ),
            Sample(
                "distributor",
                Verdict.SAME,
                INGRESS_SUBJECT,
                encode_order(express[5]),
                live[5],
                live[5],
                "c" * 64,
                time.time_ns(),
                106,
            ),
            Sample(
                "distributor",
                Verdict.CANDIDATE_FAULT,
                INGRESS_SUBJECT,
                b"\x00\xff",
                live[0],
                RecordedReply("fault", b"trap: unreachable"),
                "c" * 64,
                time.time_ns(),
                107,
            ),
            Sample(
                "receiver-express", Verdict.DIFFERENT, "orders.express", b"{}", live[0], moved[0], "d" * 64, time.time_ns(), 5
            ),
        ]
        for sample in samples:
            try:
                await js.publish(sample_subject(sample.function, sample.verdict), encode_sample(sample))
                stored.append(True)
            except nats.js.errors.APIError:
                stored.append(False)  # over the limit of its verdict: a host ignores the refusal
        await nc.close()
        return stored

    assert asyncio.run(publish_samples()) == [True, True, True, False, False, True, True, True]

    code, out, err = ebbtide(capsys, manifest, "shadow", "report", "distributor")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == [
        "shadow report for distributor",
        "  different              3",
        "  candidate_fault        1",
        "  same                   1",
    ]
    assert f"candidate sha256 {'c' * 64}" in out and "keeps at most 3 of each" in out
    blocks = out.split("── ")[1:]
    assert [block.splitlines()[0].split(":")[0] for block in blocks] == [
        "different 1 of 3",
        "different 2 of 3",
        "different 3 of 3",
        "candidate_fault 1 of 1",
    ]
    for i, block in enumerate(blocks[:3]):
        assert f"orders.ingress, ORDERS #{100 + i}" in block
        assert f'"orderId":{express[i].order_id}' in block.replace(" ", "")  # the input's preview
        assert f"-publish orders.express: {encode_order(express[i]).decode()}" in block
        assert f"+publish orders.standard: {encode_order(express[i]).decode()}" in block
    assert "input (2 bytes): 00 ff" in blocks[3] and "+FAULT: trap: unreachable" in blocks[3]

    code, out, _ = ebbtide(capsys, manifest, "shadow", "report", "distributor", "--verdict", "same", "--limit", "1")
    assert code == 0 and out.count("── ") == 1 and "── same 1 of 1: orders.ingress, ORDERS #106" in out
    code, out, _ = ebbtide(capsys, manifest, "shadow", "report", "distributor", "--limit", "0", "--json")
    document = json.loads(out)
    assert code == 0 and document["counts"] == {"different": 3, "candidate_fault": 1, "same": 1} and document["samples"] == []
    code, out, _ = ebbtide(capsys, manifest, "shadow", "report", "receiver-standard")
    assert code == 0 and "no samples of receiver-standard yet" in out
    code, _, err = ebbtide(capsys, manifest, "shadow", "report", "nobody")
    assert code == 2 and "no function named 'nobody'" in err


def test_replay_from_the_dlq_and_a_stream_range_judges_exactly_the_changed_messages_and_writes_nothing(
    tmp_path: Path, server: tuple[LoadedManifest, ServerAccess], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, access = server
    orders = generate_orders(40, seed=9, express_share=0.5)
    drones = {f"drone-{i}": drone_order(900 + i) for i in range(3)}
    ingress_seq: dict[str, int] = {}

    async def run_pipeline() -> None:
        await provision_for(manifest, access.url, access.admin)
        nc = await nats.connect(access.url, **access.admin.connect_options())
        js = nc.jetstream()
        async with Host(manifest, access.url, auth=access.admin):
            pending = iter(drones.items())
            for i, order in enumerate(orders):
                ack = await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
                ingress_seq[order.order_guid] = ack.seq
                if i % 13 == 5:  # orders 5, 18, 31
                    msg_id, payload = next(pending)
                    ingress_seq[msg_id] = (await js.publish(INGRESS_SUBJECT, payload, headers={"Nats-Msg-Id": msg_id})).seq

            async def settled() -> bool:
                return not await backlog(nc) and (await js.stream_info("DLQ")).state.messages == len(drones)

            await wait_until(settled)
        await nc.close()

    asyncio.run(run_pipeline())
    before = asyncio.run(server_state(access))
    assert before["DLQ"][0] == 3  # type: ignore[index]

    # The distributor's source is edited to accept drones; its built module (what runs) is still the old one.
    edited = with_distributor_source(manifest, candidate_source(tmp_path, ACCEPTS_DRONES))
    built = manifest.module_path("distributor")
    built_before = (built.read_bytes(), built.with_suffix(".recipe").read_text())
    code, out, err = ebbtide(capsys, edited, "replay", "--function", "distributor", "--build", "--from-dlq")
    assert code == 0, err
    assert (built.read_bytes(), built.with_suffix(".recipe").read_text()) == built_before  # build/ left as it was
    lines = out.splitlines()
    assert lines[1:4] == ["  different              3", "  candidate_fault        0", "  same                   0"]
    assert "  would now handle 3 dead letter(s): DLQ #1, #2, #3" in lines
    assert "  3 dead letter(s) of distributor" in lines
    blocks = out.split("── ")[1:]
    assert len(blocks) == 3
    for i, block in enumerate(blocks):
        assert f"different {i + 1} of 3: orders.ingress, DLQ #{i + 1}" in block
        assert '-REJECT: unknown-delivery: "Drone"' in block
        # The diff shows an effect's first 400 characters (rollout/compare.py): this order is longer.
        assert f"+publish orders.express: {drone_order(900 + i).decode()[:300]}" in block

    # A stream range: the Standard orders of it, and only they, would be routed differently.
    rerouting = tmp_path / "reroutes-standard.wasm"
    build_module(with_distributor_source(manifest, candidate_source(tmp_path, REROUTES_STANDARD)), "distributor", into=rerouting)
    first, last = ingress_seq[orders[10].order_guid], ingress_seq[orders[29].order_guid]
    in_range = [o for o in orders if first <= ingress_seq[o.order_guid] <= last]
    drones_in_range = [m for m in drones if first <= ingress_seq[m] <= last]
    standard = [o for o in in_range if o.delivery == "Standard"]
    assert 0 < len(standard) < len(in_range) and drones_in_range
    code, out, err = ebbtide(
        capsys,
        manifest,
        "replay",
        "--function",
        "distributor",
        "--module",
        str(rerouting),
        "--stream",
        "ORDERS",
        "--from-seq",
        str(first),
        "--to-seq",
        str(last),
        "--limit",
        "100",
        "--json",
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["counts"] == {
        "different": len(standard),
        "candidate_fault": 0,
        "same": len(in_range) - len(standard) + len(drones_in_range),  # the drones: rejected by both
    }
    assert document["would_handle"] is None and document["sequences_of"] == "ORDERS"
    assert sorted(s["stream_sequence"] for s in document["samples"]) == sorted(ingress_seq[o.order_guid] for o in standard)
    for shown in document["samples"]:
        assert "-publish orders.standard" in shown["diff"] and "+publish orders.express" in shown["diff"]
        assert json.loads(base64.b64decode(shown["payload"]))["delivery"] == "Standard"

    # Usage errors (exit 2), each named.
    for args, message in (
        (["--module", str(tmp_path / "missing.wasm"), "--from-dlq"], "the candidate module does not load"),
        (["--module", str(rerouting), "--stream", "ORDERS", "--from-seq", "0"], "--from-seq must be at least 1"),
        (["--module", str(rerouting), "--stream", "ORDERS", "--from-seq", "5", "--to-seq", "4"], "--to-seq 4 is before"),
        (["--module", str(rerouting), "--stream", "ORDERS", "--from-seq", "999999"], "past the end of ORDERS"),
        (["--module", str(rerouting), "--stream", "NOPE", "--from-seq", "1"], "no stream 'NOPE' under [streams]"),
        (["--module", str(rerouting), "--from-dlq", "--from-seq", "1"], "not with --from-dlq"),
    ):
        code, _, err = ebbtide(capsys, manifest, "replay", "--function", "distributor", *args)
        assert (code, message in err, "Traceback" in err) == (2, True, False), (args, err)
    code, _, err = ebbtide(capsys, manifest, "replay", "--function", "nobody", "--module", str(rerouting), "--from-dlq")
    assert code == 2 and "no function named 'nobody'" in err

    assert asyncio.run(server_state(access)) == before  # nothing written, no consumer left behind

    # A server that does not answer: a run-time failure (exit 1), no traceback.
    code, _, err = ebbtide(
        capsys,
        manifest,
        "replay",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--function",
        "distributor",
        "--module",
        str(rerouting),
        "--from-dlq",
    )
    assert code == 1 and "Traceback" not in err


async def test_a_stream_range_of_an_ordered_function_holds_its_keyed_and_its_bare_messages_in_stream_order(nc) -> None:
    """An ordered function's messages are stored as `<trigger>.<partition>` (and keyless ones on the bare
    trigger): a replay reads them all, in stream order, and nothing of other subjects."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))
    sent = ["orders.ingress.3", "orders.express", "orders.ingress", "orders.ingress.0", "orders.ingress.3"]
    for n, subject in enumerate(sent):
        await js.publish(subject, b"%d" % n)
    selected = await stream_range(nc, "ORDERS", 1, None)
    read = [
        (m.subject, m.payload)
        async for m in stream_inputs(nc, selected, ["orders.ingress.0", "orders.ingress.3", "orders.ingress"])
    ]
    assert read == [(s, b"%d" % n) for n, s in enumerate(sent) if s != "orders.express"]
    only_bare = [m.subject async for m in stream_inputs(nc, selected, ["orders.ingress"])]
    assert only_bare == ["orders.ingress"]
