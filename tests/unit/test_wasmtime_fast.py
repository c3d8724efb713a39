"""Fails loudly if the wasmtime-py internals behind the fast path change (see runtime/_wasmtime_fast.py)."""

import pytest
import wasmtime

from ebbtide.runtime import _wasmtime_fast as fast
from tests.dependency_range import installed_is_declared


def test_a_declared_release() -> None:
    """The internals used are checked by the tests below, on every release ebbtide declares
    (.ci/dependency-range runs them on the lowest and the highest)."""
    installed_is_declared("wasmtime")


def test_raw_call_memory_and_fuel() -> None:
    config = wasmtime.Config()
    config.consume_fuel = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(
        engine,
        """
        (module (memory (export "memory") 1)
          (func (export "add") (param i32 i32) (result i32)
            (i32.store8 (i32.const 8) (i32.add (i32.load8_u (i32.const 0)) (i32.const 1)))
            (i32.add (local.get 0) (local.get 1)))
          (func (export "spin") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0)))""",
    )
    store = wasmtime.Store(engine)
    fast.set_fuel(store, 1000)
    instance = wasmtime.Instance(store, module, [])
    exports = instance.exports(store)
    base = fast.memory_base(store, exports["memory"])
    import ctypes

    ctypes.memmove(base, b"\x29", 1)
    assert fast.RawCall(store, exports["add"], 2)(40, 2) == 42
    assert ctypes.string_at(base + 8, 1) == b"\x2a"
    spin = fast.RawCall(store, exports["spin"], 2)
    try:
        spin(0, 0)
    except wasmtime.Trap as trap:
        assert trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL
    else:
        raise AssertionError("a runaway guest must trap when its fuel is gone")


def test_export_picker_fetches_exports_by_index() -> None:
    engine = wasmtime.Engine()
    module = wasmtime.Module(
        engine,
        """
        (module (func (export "a") (result i32) (i32.const 1)) (memory (export "memory") 1)
          (func (export "b") (result i32) (i32.const 2)))""",
    )
    first_store = wasmtime.Store(engine)
    picker = fast.ExportPicker(first_store, wasmtime.Instance(first_store, module, []), ("b", "memory"))
    store = wasmtime.Store(engine)
    func, memory = picker.pick(store, wasmtime.Instance(store, module, []))  # another instance of the module
    assert isinstance(func, wasmtime.Func) and func(store) == 2
    assert isinstance(memory, wasmtime.Memory) and memory.data_len(store) == 65536


class HostImportFailed(Exception):
    pass


def test_an_exception_in_a_host_import_is_raised_by_its_call_not_by_a_later_trap() -> None:
    """wasmtime-py keeps an exception raised by a Python host import in `_func.LAST_EXCEPTION` and raises it
    from the call that ran the import (`maybe_raise_last_exn`). RawCall must do the same: else the call
    raised a bare "python exception" trap, and the exception stayed behind to surface at the next
    unrelated trap, of any instance, through wasmtime-py's own API."""
    engine = wasmtime.Engine()
    module = wasmtime.Module(
        engine,
        """
        (module (import "host" "fail" (func $fail))
          (func (export "calls_host") (param i32) (result i32) (call $fail) (i32.const 0))
          (func (export "traps") (param i32) (result i32) unreachable))""",
    )
    failing = HostImportFailed("raised by the host import")

    def fail() -> None:
        raise failing

    linker = wasmtime.Linker(engine)
    linker.define_func("host", "fail", wasmtime.FuncType([], []), fail)
    store = wasmtime.Store(engine)
    instance = linker.instantiate(store, module)
    exports = instance.exports(store)
    calls_host = exports["calls_host"]
    traps = exports["traps"]
    assert isinstance(calls_host, wasmtime.Func) and isinstance(traps, wasmtime.Func)

    with pytest.raises(HostImportFailed) as raised:
        fast.RawCall(store, calls_host, 1)(0)
    assert raised.value is failing  # the exception itself, as wasmtime-py's Func.__call__ raises it
    # ... and nothing left behind: the next trap is that trap, through RawCall and through wasmtime-py alike.
    with pytest.raises(wasmtime.Trap) as trapped:
        fast.RawCall(store, traps, 1)(0)
    assert trapped.value.trap_code == wasmtime.TrapCode.UNREACHABLE
    with pytest.raises(wasmtime.Trap):
        traps(store, 0)
