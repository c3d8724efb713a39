"""The runtime refuses a bad module or a bad call, with a clear error, instead of running it: each test
here is a small guest in WAT that breaks one rule of the ABI (docs/abi.md) or of the WASI grants."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import wasmtime

from ebbtide.runtime import (
    GuestFault,
    GuestInitError,
    GuestInstance,
    GuestLimits,
    InputTooLarge,
    ModuleLoadError,
    Status,
    WasmEngine,
    wasi,
)
from ebbtide.runtime.wasi import ERRNO_FAULT, ERRNO_INVAL, ERRNO_SUCCESS, MAX_RANDOM_BYTES

PAGES = 3
MEMORY_SIZE = PAGES * 65536
LIMITS = GuestLimits(memory_bytes=4 * 1024 * 1024, fuel=1_000_000)
INPUT_PTR, OUTPUT_PTR = 65536, 131072

EXPORTS = {  # name -> its WAT; a test replaces or leaves out one of them
    "memory": f'(memory (export "memory") {PAGES})',
    "ebbtide_abi_version": '(func (export "ebbtide_abi_version") (result i32) (i32.const 1))',
    "ebbtide_input_ptr": f'(func (export "ebbtide_input_ptr") (result i32) (i32.const {INPUT_PTR}))',
    "ebbtide_input_capacity": '(func (export "ebbtide_input_capacity") (result i32) (i32.const 32768))',
    "ebbtide_output_ptr": f'(func (export "ebbtide_output_ptr") (result i32) (i32.const {OUTPUT_PTR}))',
    "ebbtide_output_capacity": '(func (export "ebbtide_output_capacity") (result i32) (i32.const 65536))',
    "ebbtide_init": f'(func (export "ebbtide_init") (param i32) (result i32) (i32.store (i32.const {OUTPUT_PTR}) (i32.const 0)) (i32.const 0))',
    # Default handle: status REJECT with an output of N bytes, N the first input word (after the subject).
    "ebbtide_handle": f"""(func (export "ebbtide_handle") (param $subject_len i32) (param $len i32) (result i32)
        (i32.store (i32.const {OUTPUT_PTR}) (i32.load (i32.add (i32.const {INPUT_PTR}) (local.get $subject_len))))
        (i32.const 1))""",
}


def module(tmp_path: Path, imports: str = "", **replaced: str | None) -> Path:
    """A guest module file: the ABI's exports, with `replaced` ones swapped (None: left out)."""
    parts = {**EXPORTS, **replaced}
    wat = "(module\n" + imports + "\n" + "\n".join(text for text in parts.values() if text is not None) + ")"
    path = tmp_path / f"guest-{abs(hash(wat))}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def start(engine: WasmEngine, path: Path, grants: frozenset[str] = frozenset()) -> GuestInstance:
    return GuestInstance(engine, engine.load(path, wasi_grants=grants), LIMITS, b"{}")


@pytest.fixture(scope="module")
def engine() -> WasmEngine:
    return WasmEngine(memory_reservation=LIMITS.memory_bytes)


def test_a_well_formed_guest_runs(tmp_path: Path, engine: WasmEngine) -> None:
    """The baseline the other tests break one rule of."""
    guest = start(engine, module(tmp_path))
    status, output = guest.handle(b"s", struct.pack("<I", 3))
    assert status is Status.REJECT and len(output) == 3


@pytest.mark.parametrize("missing", list(EXPORTS))
def test_a_missing_export_refuses_the_module(tmp_path: Path, engine: WasmEngine, missing: str) -> None:
    unexported = f"(memory {PAGES})" if missing == "memory" else None  # the functions still need a memory
    with pytest.raises(ModuleLoadError, match=f"missing export(ed function)? `{missing}`"):
        engine.load(module(tmp_path, **{missing: unexported}))


def test_an_export_of_the_wrong_type_refuses_the_module(tmp_path: Path, engine: WasmEngine) -> None:
    one_param = '(func (export "ebbtide_handle") (param i32) (result i32) (i32.const 0))'
    with pytest.raises(ModuleLoadError, match=r"`ebbtide_handle` has type .*expected 2 i32 parameter"):
        engine.load(module(tmp_path, ebbtide_handle=one_param))
    memory_as_global = '(global (export "memory") i32 (i32.const 0)) (memory 3)'
    with pytest.raises(ModuleLoadError, match="missing export `memory` \\(memory\\)"):
        engine.load(module(tmp_path, memory=memory_as_global))


def test_another_abi_version_refuses_the_module(tmp_path: Path, engine: WasmEngine) -> None:
    unknown = '(func (export "ebbtide_abi_version") (result i32) (i32.const 99))'
    with pytest.raises(ModuleLoadError, match="guest ABI version 99"):
        start(engine, module(tmp_path, ebbtide_abi_version=unknown))


@pytest.mark.parametrize(
    ("export", "value"),
    [
        ("ebbtide_input_ptr", MEMORY_SIZE - 100),  # input [size-100, +32768) runs past the end
        ("ebbtide_input_ptr", -1),  # a negative i32 (0xffffffff)
        ("ebbtide_input_capacity", MEMORY_SIZE),  # from 65536, twice the memory
        ("ebbtide_output_ptr", OUTPUT_PTR + 4),  # output [131076, +65536) ends 4 bytes past the memory
        ("ebbtide_output_capacity", 3),  # too small for the 4-byte length header
    ],
)
def test_a_buffer_outside_memory_refuses_the_module(tmp_path: Path, engine: WasmEngine, export: str, value: int) -> None:
    changed = f'(func (export "{export}") (result i32) (i32.const {value}))'
    with pytest.raises(GuestInitError, match="buffer .* is outside memory"):
        start(engine, module(tmp_path, **{export: changed}))


def test_a_buffer_that_ends_exactly_at_the_end_of_memory_is_accepted(tmp_path: Path, engine: WasmEngine) -> None:
    """The default layout's output buffer ends at the last byte: the bound is inclusive, not off by one."""
    assert OUTPUT_PTR + 65536 == MEMORY_SIZE
    assert start(engine, module(tmp_path)).input_capacity == 32768


def test_an_output_longer_than_its_buffer_is_a_guest_fault(tmp_path: Path, engine: WasmEngine) -> None:
    guest = start(engine, module(tmp_path))
    room = 65536 - 4
    status, output = guest.handle(b"s", struct.pack("<I", room))  # exactly fills the buffer: fine
    assert status is Status.REJECT and len(output) == room
    with pytest.raises(GuestFault, match="output length 65533 exceeds the output buffer") as fault:
        guest.handle(b"s", struct.pack("<I", room + 1))
    assert fault.value.kind == "invalid-output"
    with pytest.raises(GuestFault, match="exceeds the output buffer"):  # a huge length, not only one byte over
        guest.handle(b"s", struct.pack("<I", 0xFFFFFFF0))


def test_an_input_larger_than_the_input_buffer_is_refused_before_the_call(tmp_path: Path, engine: WasmEngine) -> None:
    guest = start(engine, module(tmp_path))
    assert guest.handle(b"subj", b"\0" * (32768 - 4))[0] is Status.REJECT  # subject + payload fill it exactly
    with pytest.raises(InputTooLarge, match="message of 32769 bytes exceeds the guest's input buffer \\(32768\\)"):
        guest.handle(b"subj", b"\0" * (32768 - 3))


# A guest that calls one WASI function with arguments from its input and returns the errno as its output.
# Input (after the subject): op (i32: 0 random_get, 1 clock_time_get, 2 clock_res_get), pointer, length.
WASI_IMPORTS = """
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))"""
WASI_HANDLE = f"""(func (export "ebbtide_handle") (param $subject_len i32) (param $len i32) (result i32)
    (local $in i32) (local $op i32) (local $ptr i32) (local $n i32) (local $errno i32)
    (local.set $in (i32.add (i32.const {INPUT_PTR}) (local.get $subject_len)))
    (local.set $op (i32.load (local.get $in)))
    (local.set $ptr (i32.load (i32.add (local.get $in) (i32.const 4))))
    (local.set $n (i32.load (i32.add (local.get $in) (i32.const 8))))
    (if (i32.eqz (local.get $op))
      (then (local.set $errno (call $random_get (local.get $ptr) (local.get $n)))))
    (if (i32.eq (local.get $op) (i32.const 1))
      (then (local.set $errno (call $clock_time_get (i32.const 0) (i64.const 1) (local.get $ptr)))))
    (if (i32.eq (local.get $op) (i32.const 2))
      (then (local.set $errno (call $clock_res_get (i32.const 1) (local.get $ptr)))))
    (i32.store (i32.const {OUTPUT_PTR}) (i32.const 4))
    (i32.store (i32.const {OUTPUT_PTR + 4}) (local.get $errno))
    (i32.const 1))"""


@pytest.fixture
def wasi_guest(tmp_path: Path, engine: WasmEngine) -> GuestInstance:
    return start(engine, module(tmp_path, WASI_IMPORTS, ebbtide_handle=WASI_HANDLE), frozenset({"clock", "random"}))


def wasi_errno(guest: GuestInstance, op: int, pointer: int, length: int = 0) -> int:
    status, output = guest.handle(b"s", struct.pack("<Iii", op, pointer, length))
    assert status is Status.REJECT
    return struct.unpack("<i", output)[0]


@pytest.mark.parametrize(
    ("op", "pointer", "length", "errno"),
    [
        (0, 4096, 16, ERRNO_SUCCESS),
        (0, MEMORY_SIZE - 16, 16, ERRNO_SUCCESS),  # ends at the last byte
        (0, MEMORY_SIZE - 8, 16, ERRNO_FAULT),  # runs 8 bytes past the end
        (0, -8, 4, ERRNO_FAULT),  # a negative pointer (0xfffffff8), not an index from the end
        (0, 0, MAX_RANDOM_BYTES + 1, ERRNO_INVAL),  # fits in memory, but more than one call may ask for
        (0, 0, -1, ERRNO_INVAL),  # 0xffffffff bytes
        (1, MEMORY_SIZE - 8, 0, ERRNO_SUCCESS),  # 8-byte timestamp at the very end
        (1, MEMORY_SIZE - 4, 0, ERRNO_FAULT),
        (1, -4, 0, ERRNO_FAULT),
        (2, MEMORY_SIZE - 7, 0, ERRNO_FAULT),
    ],
)
def test_wasi_calls_touch_only_the_callers_memory(
    wasi_guest: GuestInstance, op: int, pointer: int, length: int, errno: int
) -> None:
    memory = wasi_guest._memory
    store = wasi_guest._store
    tail_before = memory.read(store, MEMORY_SIZE - 64, MEMORY_SIZE)
    assert wasi_errno(wasi_guest, op, pointer, length) == errno
    if errno != ERRNO_SUCCESS:  # a refused call wrote nothing (a negative pointer must not wrap to the end)
        assert memory.read(store, MEMORY_SIZE - 64, MEMORY_SIZE) == tail_before


def test_a_refused_configuration_says_the_guests_words(tmp_path: Path, engine: WasmEngine) -> None:
    refusing = f"""(func (export "ebbtide_init") (param i32) (result i32)
        (i32.store (i32.const {OUTPUT_PTR}) (i32.const 2)) (i32.store16 (i32.const {OUTPUT_PTR + 4}) (i32.const 0x6f6e))
        (i32.const 1))"""
    with pytest.raises(GuestInitError, match=r"guest-\d+\.wasm: configuration refused: no$"):
        start(engine, module(tmp_path, ebbtide_init=refusing))


def test_a_host_import_that_raises_fails_the_message_and_only_that_message(
    tmp_path: Path, engine: WasmEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WASI function of the host that raises (here the realtime clock, made to fail) cuts the call short:
    a guest fault for that message (its instance is replaced, the message retried), and nothing left
    behind in wasmtime-py: the next trap of another instance is that instance's own."""
    path = module(tmp_path, WASI_IMPORTS, ebbtide_handle=WASI_HANDLE)
    guest = start(engine, path, frozenset({"clock", "random"}))

    def clock_broken() -> int:
        raise OSError("clock unavailable")

    monkeypatch.setitem(wasi._CLOCKS, 0, clock_broken)
    with pytest.raises(GuestFault, match=r"^trap: a host import raised OSError\('clock unavailable'\)") as fault:
        wasi_errno(guest, 1, 4096)
    assert fault.value.kind == "trap"
    monkeypatch.undo()
    trapping = start(
        engine, module(tmp_path, ebbtide_handle='(func (export "ebbtide_handle") (param i32 i32) (result i32) unreachable)')
    )
    with pytest.raises(GuestFault, match="^trap: .*unreachable"):
        trapping.handle(b"s", b"")
    assert wasi_errno(start(engine, path, frozenset({"clock", "random"})), 1, 4096) == ERRNO_SUCCESS


@pytest.mark.parametrize(
    ("name", "signature"),
    [
        ("fd_write", "(param i32 i32 i32 i32) (result i32)"),
        ("path_open", "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)"),
        ("proc_exit", "(param i32)"),
    ],
)
def test_wasi_functions_outside_the_groups_are_never_provided(
    tmp_path: Path, engine: WasmEngine, name: str, signature: str
) -> None:
    imports = f'(import "wasi_snapshot_preview1" "{name}" (func {signature}))'
    with pytest.raises(
        ModuleLoadError,
        match=f"imports wasi_snapshot_preview1.{name} \\(never provided\\); the function is granted clock, random",
    ):
        engine.load(module(tmp_path, imports), wasi_grants=frozenset({"clock", "random"}))


def test_imports_from_other_modules_are_never_provided(tmp_path: Path, engine: WasmEngine) -> None:
    imports = '(import "env" "random_get" (func (param i32 i32) (result i32)))'  # a granted name, another module
    with pytest.raises(ModuleLoadError, match="imports env.random_get \\(never provided\\)"):
        engine.load(module(tmp_path, imports), wasi_grants=frozenset({"random"}))


def test_a_granted_function_imported_with_another_type_is_refused(tmp_path: Path, engine: WasmEngine) -> None:
    imports = '(import "wasi_snapshot_preview1" "random_get" (func (param i64) (result i32)))'
    with pytest.raises(ModuleLoadError, match="imports do not match what the host provides"):
        engine.load(module(tmp_path, imports), wasi_grants=frozenset({"random"}))
