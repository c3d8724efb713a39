"""The report `shadow report` and `replay` print (rollout/report.py), and replay's offline judgement
(rollout/replay.py) with real Wasm guests: tests/guests/chaos.wat as the live module, a changed copy as
the candidate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wasmtime

from ebbtide.build import build_module
from ebbtide.errors import ManifestError
from ebbtide.function import GuestLoop, Instances
from ebbtide.rollout.compare import RecordedReply, Verdict, recorded
from ebbtide.rollout.replay import Replay, ReplayResult, StoredInput, Versions, load_versions
from ebbtide.rollout.report import Report, preview, render, select, to_json
from ebbtide.rollout.samples import Sample
from ebbtide.runtime.abi import KvPut, Publish, Status, decode_effects, encode_effects
from ebbtide.runtime.guest import Guest, GuestReply
from tests.conftest import GUESTS, chaos_manifest

CHAOS = (GUESTS / "chaos.wat").read_text()
# The candidate: the same guest, but the first byte of what it publishes becomes "V" (as in test_hot_reload).
_COPY = "(memory.copy (i32.const 131098) (local.get $payload) (local.get $len))"
CHAOS_V2 = CHAOS.replace(_COPY, _COPY + "\n    (i32.store8 (i32.const 131098) (i32.const 86))")


def ok(*effects: Publish | KvPut) -> RecordedReply:
    return recorded((Status.OK, encode_effects(list(effects))))


def sample(
    verdict: Verdict, seq: int, live: RecordedReply, candidate: RecordedReply, payload: bytes = b'{"orderId": 1}'
) -> Sample:
    return Sample("distributor", verdict, "orders.ingress", payload, live, candidate, "ab" * 32, 1_764_417_600_000_000_000, seq)


ROUTED = sample(
    Verdict.DIFFERENT, 17, ok(Publish("orders.express", b'{"orderId":17}')), ok(Publish("orders.standard", b'{"orderId":17}'))
)
FIXED = sample(
    Verdict.DIFFERENT, 18, recorded((Status.REJECT, b"unknown-delivery")), ok(Publish("orders.express", b'{"orderId":18}'))
)
TRAPPED = sample(Verdict.CANDIDATE_FAULT, 19, ok(), RecordedReply("fault", b"trap: wasm trap: unreachable"))
AGREED = sample(Verdict.SAME, 20, ok(), ok())


def test_the_report_gives_counts_then_each_sample_with_its_input_and_diff() -> None:
    report = Report(
        title="replay of distributor",
        counts={Verdict.DIFFERENT: 2, Verdict.CANDIDATE_FAULT: 1, Verdict.SAME: 1234},
        samples=[ROUTED, FIXED, TRAPPED],
        sequences_of="DLQ",
        notes=["3 dead letter(s) of distributor"],
        would_handle=[18],
    )
    text = render(report)
    lines = text.splitlines()
    assert lines[:4] == [
        "replay of distributor",
        "  different              2",
        "  candidate_fault        1",
        "  same               1,234",
    ]
    assert f"  candidate sha256 {'ab' * 32}" in lines
    assert "  would now handle 1 dead letter(s): DLQ #18" in lines
    assert "  3 dead letter(s) of distributor" in lines
    assert "── different 1 of 2: orders.ingress, DLQ #17, judged 2025-11-29T12:00:00Z" in lines
    assert "── different 2 of 2: orders.ingress, DLQ #18, judged 2025-11-29T12:00:00Z" in lines
    assert "── candidate_fault 1 of 1: orders.ingress, DLQ #19, judged 2025-11-29T12:00:00Z" in lines
    assert 'input (14 bytes): {"orderId": 1}' in lines
    # Each sample's diff, in the sample's block: the routing change, the rejection fixed, the trap.
    first, second, third = text.split("── ")[1:]
    assert '-publish orders.express: {"orderId":17}' in first and '+publish orders.standard: {"orderId":17}' in first
    assert "-REJECT: unknown-delivery" in second and '+publish orders.express: {"orderId":18}' in second
    assert "-OK, no effects" in third and "+FAULT: trap: wasm trap: unreachable" in third
    assert first.splitlines()[2:4] == ["--- live", "+++ candidate"]


def test_an_empty_report_says_so() -> None:
    nothing = Report("shadow report for distributor", {}, [], "ORDERS", notes=["no samples yet"])
    assert render(nothing).splitlines() == [
        "shadow report for distributor",
        "  different              0",
        "  candidate_fault        0",
        "  same                   0",
        "  no samples yet",
        "",
        "nothing judged",
    ]
    judged = Report("replay", {Verdict.SAME: 3}, [], "ORDERS", would_handle=[])
    assert render(judged).splitlines()[-3:] == ["  would now handle 0 dead letter(s)", "", "no samples to show"]


def test_select_takes_the_first_of_each_verdict_in_the_order_asked() -> None:
    samples = [AGREED, ROUTED, TRAPPED, FIXED, AGREED]
    assert select(samples, (Verdict.DIFFERENT, Verdict.CANDIDATE_FAULT), None) == [ROUTED, FIXED, TRAPPED]
    assert select(samples, (Verdict.DIFFERENT, Verdict.CANDIDATE_FAULT), 1) == [ROUTED, TRAPPED]
    assert select(samples, (Verdict.SAME,), 5) == [AGREED, AGREED]
    assert select(samples, (Verdict.DIFFERENT,), 0) == []


def test_json_carries_counts_samples_and_their_diffs() -> None:
    report = Report("replay", {Verdict.DIFFERENT: 1}, [ROUTED], "ORDERS", would_handle=None)
    document = json.loads(to_json(report))
    assert document["counts"] == {"different": 1, "candidate_fault": 0, "same": 0}
    assert document["would_handle"] is None and document["sequences_of"] == "ORDERS"
    [shown] = document["samples"]
    assert shown["verdict"] == "different" and shown["stream_sequence"] == 17 and shown["subject"] == "orders.ingress"
    assert "+publish orders.standard" in shown["diff"]


def test_preview_folds_text_and_shows_binary_as_hex() -> None:
    assert preview(b'{\n  "orderId": 1,\n  "items": []\n}') == '{ "orderId": 1, "items": [] }'
    assert preview(b"x" * 500, limit=10) == "x" * 10 + " …"
    assert preview(bytes([0, 1, 255])) == "00 01 ff"
    assert preview(bytes(range(200)), limit=6) == "00 01 …"
    assert preview(b"") == ""


# -- replay's offline judgement, real Wasm --------------------------------------------------------------


def candidate_file(tmp_path: Path, wat: str = CHAOS_V2) -> Path:
    path = tmp_path / "candidate.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def replay(versions: Versions, inputs: list[StoredInput], *, keep: int, dead_letters: bool = False) -> ReplayResult:
    judge = Replay(versions, keep=keep, dead_letters=dead_letters)
    for stored in inputs:
        judge.add(stored)
    return judge.finish()


def test_replay_judges_every_message_and_says_which_dead_letters_the_candidate_handles(tmp_path: Path) -> None:
    manifest = chaos_manifest(tmp_path)  # max_payload 4096, publish ["test.out"]
    versions = load_versions(manifest, "chaos", candidate_file(tmp_path))
    payloads = [b"a1", b"T", b"a2", b"F", b"X", b"b" * 5000, b"a3"]
    inputs = [StoredInput("in.chaos", payload, seq) for seq, payload in enumerate(payloads, start=1)]
    inputs.append(StoredInput("in.chaos", b"a4", 9, unusable="payload cut when dead-lettered"))

    result = replay(versions, inputs, keep=10, dead_letters=True)
    assert replay(versions, inputs * 100, keep=10).counts[Verdict.DIFFERENT] == 300  # several chunks

    # a1, a2, a3: published with a "V" by the candidate. T traps in both (a candidate fault); F (a forbidden
    # subject) and X (reject) answer the same in both.
    assert result.counts == {Verdict.DIFFERENT: 3, Verdict.CANDIDATE_FAULT: 1, Verdict.SAME: 2}
    by_seq = {s.stream_sequence: s for s in result.samples}
    assert {seq for seq, s in by_seq.items() if s.verdict is Verdict.DIFFERENT} == {1, 3, 7}
    assert by_seq[2].verdict is Verdict.CANDIDATE_FAULT and by_seq[2].candidate.status == "fault"
    assert decode_effects(by_seq[3].live.output) == [Publish("test.out", b"a2")]  # after the trap, a fresh instance
    assert decode_effects(by_seq[3].candidate.output) == [Publish("test.out", b"V2")]
    assert result.would_handle == [1, 3, 7]  # not T (fault), F (refused by the allowlist), X (rejected)
    assert result.skipped == {
        "over limits.max_payload (4096 bytes): never handed to a guest": [6],
        "payload cut when dead-lettered": [9],
    }
    assert all(s.candidate_sha256 == versions.candidate.sha256 != versions.live.sha256 for s in result.samples)

    kept = replay(versions, inputs, keep=1)
    assert [s.stream_sequence for s in kept.samples] == [1, 2, 4] and kept.would_handle == []
    assert kept.counts == result.counts


def test_a_fault_mid_chunk_restarts_the_instance_for_the_rest(tmp_path: Path) -> None:
    manifest = chaos_manifest(tmp_path)
    versions = load_versions(manifest, "chaos", candidate_file(tmp_path, CHAOS))

    class Counted(Instances):
        started = 0

        def start_instance(self) -> Guest:
            self.started += 1
            return super().start_instance()

    source = Counted(versions.spec, versions.engine, versions.live)
    loop = GuestLoop(source, versions.spec.allowlist)
    replies: list[GuestReply] = []
    loop.run([(b"in.chaos", p) for p in (b"a", b"T", b"b", b"c", b"T", b"d")], replies)
    assert [recorded(o).status for o in replies] == ["ok", "fault", "ok", "ok", "fault", "ok"]
    assert source.started == 3  # the first instance, and one after each trap


def test_a_candidate_cannot_be_built_from_a_module_that_ships_built(tmp_path: Path) -> None:
    manifest = chaos_manifest(tmp_path)  # prebuilt = true
    with pytest.raises(ManifestError, match="modules.chaos ships built"):
        build_module(manifest, "chaos", into=tmp_path / "candidate.wasm")
