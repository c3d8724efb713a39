"""Rollout records, shares and the canary's rollback window (pure), and a candidate that never raises."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import msgspec
import pytest
import wasmtime
from nats.aio.msg import Msg

from ebbtide.errors import GuestFault, UsageError
from ebbtide.function import FunctionSpec, GuestLoop, RolloutStats
from ebbtide.manifest import FunctionSection
from ebbtide.ordering import LaneKeys
from ebbtide.outcome import Effects, Faulted
from ebbtide.rollout.canary import RollbackWindow
from ebbtide.rollout.candidate import Candidate, Share
from ebbtide.rollout.state import Mode, Phase, Rollout, changed, decode_rollout, encode_rollout, parse_share
from ebbtide.runtime import GuestLimits
from ebbtide.runtime.guest import GuestReply
from ebbtide.subjects import fnv1a_32
from tests.conftest import GUESTS

RECORD = Rollout(function="f", mode=Mode.CANARY, candidate_sha256="c" * 64, lang="zig", share=0.1, window=10, min_messages=5)


def test_share_parses_percentages_and_fractions() -> None:
    assert parse_share("5%") == pytest.approx(0.05)
    assert parse_share("0.25") == 0.25
    assert parse_share("100%") == 1.0
    for bad in ("0%", "101%", "1.5", "five", "-3%"):
        with pytest.raises(UsageError, match="--share"):
            parse_share(bad)


def test_a_record_round_trips_and_promotion_makes_the_candidate_live() -> None:
    assert decode_rollout(encode_rollout(RECORD)) == RECORD
    promoted = changed(RECORD, Phase.PROMOTED, "by hand")
    assert (promoted.phase, promoted.live_sha256, promoted.live_lang) == (Phase.PROMOTED, "c" * 64, "zig")
    undone = changed(promoted, Phase.ABORTED, "by hand")
    assert (undone.live_sha256, undone.phase) == ("", Phase.ABORTED)  # back to the manifest's module
    rolled_back = changed(RECORD, Phase.ROLLED_BACK, "faults")
    assert rolled_back.live_sha256 == "" and not rolled_back.active


def test_fnv1a_matches_its_reference_values() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def _msg(data: bytes, msg_id: str | None = None) -> Msg:
    return Msg(None, subject="in", data=data, headers={"Nats-Msg-Id": msg_id} if msg_id else None)  # type: ignore[arg-type]


def test_a_share_is_stable_and_close_to_its_size() -> None:
    share = Share(0.1)
    ids = [f"{random.Random(7).getrandbits(128):032x}-{i}" for i in range(20_000)]
    taken = [share.takes(_msg(b"same payload", i)) for i in ids]
    assert abs(sum(taken) / len(ids) - 0.1) < 0.01
    assert taken == [share.takes(_msg(b"other payload", i)) for i in ids]  # the message id decides, every time
    assert share.takes(_msg(b"x")) == share.takes(_msg(b"x"))  # no id: the payload decides
    assert all(Share(1.0).takes(_msg(i.encode())) for i in ids[:100])


def test_the_window_rolls_back_past_a_threshold_only_once_it_has_seen_enough() -> None:
    window = RollbackWindow(RECORD)  # 5 % thresholds, 5 messages at least, the last 10
    assert [window.observe("fault") for _ in range(4)] == [None] * 4  # too few to judge
    assert "fault rate" in (window.observe("ok") or "")
    calm = RollbackWindow(RECORD)
    assert all(calm.observe("ok") is None for _ in range(50))
    assert "dead-letter rate" in (calm.observe("dead_letter") or "")  # 1 of the last 10 > 5 %


class _Slot:
    """Where a worker keeps its candidate loop (function.WorkerGuests)."""

    candidate: GuestLoop | None = None


def test_a_candidate_that_traps_or_cannot_start_answers_faults_and_never_raises(tmp_path: Path) -> None:
    chaos = tmp_path / "chaos.wasm"
    chaos.write_bytes(wasmtime.wat2wasm((GUESTS / "chaos.wat").read_text()))
    section = msgspec.convert(
        {"module": "chaos", "trigger": "in", "publish": ["test.out"], "limits": {"memory_mib": 2, "fuel": 2_000_000}},
        FunctionSection,
    )
    spec = FunctionSpec.of_section("f", section, chaos, "zig")
    engine = spec.engine()
    module = spec.load(engine)
    stats = RolloutStats()
    candidate = Candidate(RECORD, module, engine, spec, stats)
    slot = _Slot()
    replies: list[GuestReply] = []
    results = candidate.run(slot, [(b"in", b"ok1"), (b"in", b"T"), (b"in", b"L"), (b"in", b"M"), (b"in", b"ok2")], replies)
    assert [type(o).__name__ for o in replies] == ["tuple", "GuestFault", "GuestFault", "GuestFault", "tuple"]
    assert [o.kind for o in replies if isinstance(o, GuestFault)] == ["trap", "timeout", "memory-limit"]
    assert [type(r) for r in results] == [Effects, Faulted, Faulted, Faulted, Effects]  # as the live pool reads them
    assert slot.candidate is not None and slot.candidate.instance is not None and stats.candidate_s > 0

    # An instance that cannot start (memory below the module's minimum): every message is the candidate's fault.
    tiny = Candidate(RECORD, module, engine, dataclasses.replace(spec, limits=GuestLimits(65536, 2_000_000)), stats)
    slot = _Slot()
    replies = []
    results = tiny.run(slot, [(b"in", b"a"), (b"in", b"b")], replies)
    assert all(isinstance(o, GuestFault) and o.kind == "host-error" for o in replies)
    assert all(isinstance(r, Faulted) and r.kind == "host-error" for r in results)
    assert slot.candidate is not None and slot.candidate.instance is None


def test_an_ordered_functions_canary_splits_by_key_so_a_keys_events_go_to_one_version() -> None:
    share = Share(0.5, LaneKeys("orders.express", "orderGuid"))

    def event(key: str, n: int) -> Msg:
        # As the stream stores it: under its partition, the key in the payload only.
        data = b'{"orderGuid": "%s", "event": %d}' % (key.encode(), n)
        return Msg(None, subject="orders.express.3", data=data, headers={"Nats-Msg-Id": f"{key}-{n}"})  # type: ignore[arg-type]

    keys = [f"order-{i}" for i in range(200)]
    decisions = [{share.takes(event(key, n)) for n in range(3)} for key in keys]
    assert all(len(versions) == 1 for versions in decisions)  # every event of a key: the same version
    assert 60 < sum(True in versions for versions in decisions) < 140  # and still about half of the keys
    keyless = Msg(None, subject="orders.express", data=b'{"orderGuid": "order-1"}', headers={"Nats-Msg-Id": "id-1"})  # type: ignore[arg-type]
    assert share.takes(keyless) == Share(0.5).takes(keyless)  # the bare trigger (one sequence): by id
