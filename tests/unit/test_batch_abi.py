"""Guest ABI v2: several messages per call (`GuestInstance.handle_batch`), on real Wasm instances.

tests/guests/batch.wat speaks v2 and misbehaves on request; tests/guests/chaos.wat speaks v1. The SDKs'
batch support is checked against their per-message outputs in tests/integration/test_languages.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import wasmtime

from ebbtide.errors import GuestFault, InputTooLarge, ModuleLoadError
from ebbtide.runtime import GuestInstance, GuestLimits, Status, WasmEngine
from ebbtide.runtime.guest import Guest, GuestReply
from tests.conftest import GUESTS

LIMITS = GuestLimits(memory_bytes=1 << 20, fuel=200_000)
BATCH_WAT = (GUESTS / "batch.wat").read_text()
INPUT_CAPACITY = 65536  # batch.wat's


def _wasm(tmp_path: Path, wat: str, name: str = "guest.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


@pytest.fixture
def start(tmp_path: Path) -> Callable[[], GuestInstance]:
    """Starts fresh instances of batch.wat."""
    engine = WasmEngine()
    module = engine.load(_wasm(tmp_path, BATCH_WAT))
    return lambda: GuestInstance(engine, module, LIMITS, b"{}")


def handle_all(start: Callable[[], Guest], messages: Sequence[tuple[bytes, bytes]]) -> tuple[list[GuestReply], int]:
    """What a pool does with a fetched batch: hand it over, and the messages not handled to a fresh instance
    after a fault. Returns one outcome per message and how many instances failed."""
    replies: list[GuestReply] = []
    failed = 0
    guest = start()
    while len(replies) < len(messages):
        result = guest.handle_batch(messages[len(replies) :])
        replies += result.replies
        if result.instance_failed:
            failed += 1
            guest = start()
    return replies, failed


def _messages(*payloads: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"in.batch", payload) for payload in payloads]


def test_a_batch_gives_each_message_the_outcome_of_its_own_call(start: Callable[[], GuestInstance]) -> None:
    messages = _messages(*(b"message %d " % i + b"x" * (i * 97 % 1500) for i in range(3000)), b"", b"Rejected")
    guest = start()
    assert guest.takes_batches
    result = guest.handle_batch(messages)  # 3,000 messages of ~750 bytes: several input buffers' worth
    assert not result.instance_failed
    assert result.replies == [guest.handle(subject, payload) for subject, payload in messages]
    assert result.replies[-1] == (Status.REJECT, b"Rejected")
    assert guest.handle_batch([]).replies == []


def test_a_guest_that_ends_a_call_early_gets_the_rest_in_the_next_call(start: Callable[[], GuestInstance]) -> None:
    messages = _messages(b"a", b"Stop here", b"b", b"Stop again", b"c")
    result = start().handle_batch(messages)
    assert result.replies == [(Status.OK, payload) for _, payload in messages] and not result.instance_failed


def test_messages_too_large_for_a_record_go_alone_and_too_large_ones_are_refused(start: Callable[[], GuestInstance]) -> None:
    subject = b"in.batch"
    fits_alone_only = b"y" * (INPUT_CAPACITY - len(subject) - 4)  # the 8-byte record header does not fit
    too_large = b"z" * INPUT_CAPACITY
    messages = _messages(b"a", fits_alone_only, b"b", too_large, b"c")
    result = start().handle_batch(messages)
    assert not result.instance_failed
    assert result.replies[:3] == [(Status.OK, b"a"), (Status.OK, fits_alone_only), (Status.OK, b"b")]
    assert isinstance(result.replies[3], InputTooLarge)
    assert result.replies[4] == (Status.OK, b"c")


def test_a_trap_mid_batch_fails_only_its_message(start: Callable[[], GuestInstance]) -> None:
    messages = _messages(b"a", b"b", b"Trap", b"c", b"d")
    result = start().handle_batch(messages)
    assert result.instance_failed
    assert result.replies[:2] == [(Status.OK, b"a"), (Status.OK, b"b")]
    assert isinstance(result.replies[2], GuestFault) and result.replies[2].kind == "trap"
    assert len(result.replies) == 3  # c and d were not handled: a fresh instance takes them
    replies, failed = handle_all(start, messages)
    assert replies[3:] == [(Status.OK, b"c"), (Status.OK, b"d")] and failed == 1


def test_a_runaway_message_is_charged_only_when_it_used_a_whole_call_alone(start: Callable[[], GuestInstance]) -> None:
    messages = _messages(b"a", b"b", b"Loop", b"c")
    first = start().handle_batch(messages)
    # The earlier messages used part of the call's fuel: the runaway is not charged yet, but rerun first.
    assert first.instance_failed and first.replies == [(Status.OK, b"a"), (Status.OK, b"b")]
    replies, failed = handle_all(start, messages)
    assert isinstance(replies[2], GuestFault) and replies[2].kind == "timeout", replies[2]
    assert "fuel of a batch of 2 messages" in str(replies[2])
    assert replies[3] == (Status.OK, b"c") and failed == 2
    alone = start().handle_batch(_messages(b"Loop"))
    assert isinstance(alone.replies[0], GuestFault) and str(alone.replies[0]) == (
        f"timeout: used its fuel limit of {LIMITS.fuel} for one message"
    )


def test_an_unknown_status_mid_batch_fails_its_message(start: Callable[[], GuestInstance]) -> None:
    result = start().handle_batch(_messages(b"a", b"X", b"c"))
    assert result.instance_failed and result.replies[0] == (Status.OK, b"a")
    assert isinstance(result.replies[1], GuestFault) and result.replies[1].kind == "invalid-output"
    assert len(result.replies) == 2


def test_a_counter_that_disagrees_with_the_result_is_a_fault(tmp_path: Path) -> None:
    lying = BATCH_WAT.replace("    (local.get $done)))", "    (i32.add (local.get $done) (i32.const 1))))")
    engine = WasmEngine()
    guest = GuestInstance(engine, engine.load(_wasm(tmp_path, lying)), LIMITS, b"{}")
    result = guest.handle_batch(_messages(b"a", b"b"))
    assert result.instance_failed and len(result.replies) == 1
    assert isinstance(result.replies[0], GuestFault) and "counter" in str(result.replies[0])


def test_a_trap_before_the_guest_counts_anything_is_charged_to_the_first_message(tmp_path: Path) -> None:
    """The host zeroes the progress counter before each call: a stale count from the previous call would
    hand its replies to this call's messages."""
    entry = "    (i32.store (i32.const 131072) (i32.const 0))\n    (local.set $in"
    assert entry in BATCH_WAT
    traps_at_entry = BATCH_WAT.replace(
        entry, "    (if (i32.eq (local.get $count) (i32.const 3)) (then unreachable))\n    (local.set $in"
    )
    engine = WasmEngine()
    guest = GuestInstance(engine, engine.load(_wasm(tmp_path, traps_at_entry)), LIMITS, b"{}")
    assert guest.handle_batch(_messages(b"a", b"b")).replies == [(Status.OK, b"a"), (Status.OK, b"b")]
    result = guest.handle_batch(_messages(b"c", b"d", b"e"))
    assert result.instance_failed and len(result.replies) == 1
    assert isinstance(result.replies[0], GuestFault) and result.replies[0].kind == "trap"


def test_a_v1_module_still_loads_and_is_called_once_per_message(tmp_path: Path) -> None:
    engine = WasmEngine()
    module = engine.load(_wasm(tmp_path, (GUESTS / "chaos.wat").read_text()))
    start = lambda: GuestInstance(engine, module, LIMITS, b"{}")  # noqa: E731
    guest = start()
    assert not guest.takes_batches
    messages = _messages(b"one", b"Xno", b"Trap", b"two")
    expected_first = guest.handle(*messages[0])
    result = guest.handle_batch(messages)
    assert result.instance_failed and result.replies[:2] == [expected_first, (Status.REJECT, b"refused by the chaos guest")]
    assert isinstance(result.replies[2], GuestFault) and len(result.replies) == 3
    replies, failed = handle_all(start, messages)
    assert replies[3] == start().handle(*messages[3]) and failed == 1


WRONG_TYPE = '(func (export "ebbtide_handle_batch") (param i64) (result i32) (i32.const 0))'


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("(i32.const 2))", "(i32.const 3))"), "guest ABI version 3, this host speaks 1, 2"),
        (('(export "ebbtide_handle_batch")', ""), "guest ABI version 2 without `ebbtide_handle_batch`"),
        (('(export "ebbtide_handle_batch")', ""), "`ebbtide_handle_batch` has type"),
    ],
)
def test_an_inconsistent_version_is_refused(tmp_path: Path, change: tuple[str, str], error: str) -> None:
    wat = BATCH_WAT.replace(*change, 1)
    if "has type" in error:
        wat = wat[: wat.rindex(")")] + WRONG_TYPE + ")"
    assert wat != BATCH_WAT
    engine = WasmEngine()
    with pytest.raises(ModuleLoadError, match=re.escape(error)):
        GuestInstance(engine, engine.load(_wasm(tmp_path, wat)), LIMITS, b"{}")
