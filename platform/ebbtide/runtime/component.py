"""Guests built as WebAssembly *components* (Python through componentize-py and functions/sdk-python).

The world (functions/sdk-python/wit/ebbtide.wit, `ebbtide:function/handler@2.0.0`) carries the guest ABI
v2 contract: `init(config: string) -> result<_, string>` once per instance, and
`handle-batch(records: string) -> string` once per batch of messages, whose input records and output
records are those of the core ABI v2 (docs/abi.md), as Latin-1 strings. So `ComponentGuest.handle_batch`
returns what `GuestInstance.handle_batch` returns, and effects are decoded and carried out the same way.

Why this shape (measured, docs/functions.md): wasmtime-py lifts and lowers a `list<u8>` one element at a
time in Python (~1 µs a byte) but a `string` in one copy, and a call into the component costs ~100 µs
whatever it carries (Python-side argument handling, the interpreter's entry), so one call per batch and
strings. Instances share the component's pre-initialized memory image copy-on-write (wasmtime's
`memory_init_cow`, on by default and required here); see `ComponentEngine`.

The Python runtime imports WASI 0.2; an instance gets an empty WASI context: no files, environment,
arguments, stdio or sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import wasmtime
import wasmtime.component as wc

from ..errors import ComponentLoadError, GuestFault, GuestInitError, InputTooLarge
from . import abi
from .cache import compile_cached, read_checked
from .guest import BatchResult, GuestLimits, GuestReply, cause, classify_trap, handle_one_by_one

EXPORT_INIT = "init"
EXPORT_HANDLE_BATCH = "handle-batch"
# A message never exceeds a core module's input buffer either: the same cap for the same manifest.
MAX_INPUT = 64 * 1024
# Records handed to the guest per call: what a core module's input buffer takes (docs/abi.md).
MAX_BATCH_BYTES = 64 * 1024
STATUS_RAISED = 3  # the SDK's status for a handler that raised: failed like a trap (see the world)


@dataclass(eq=False)
class LoadedComponent:
    path: Path
    sha256: str
    component: wc.Component


class ComponentEngine:
    """One engine and linker for component guests (fuel on; WASI 0.2 linked, granted nothing per store).

    Memory: the component's linear memory starts from the image componentize-py snapshotted at build
    time (the interpreter with the function imported). With `memory_init_cow` wasmtime maps that image
    copy-on-write into every instance instead of copying it, so instances of one component share it and
    only the pages an instance writes cost memory (the SDK freezes the snapshot's objects for Python's
    garbage collector, which would otherwise write to all of them). wasmtime-py 50 has no component
    `InstancePre` (only core modules have one) and no public pooling-allocator setting: instantiation goes
    through `Linker.instantiate`.
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.memory_init_cow = True  # the default, stated: instances share the snapshot (see above)
        self.engine = wasmtime.Engine(config)
        self.linker = wc.Linker(self.engine)
        self.linker.add_wasip2()
        self._cache_dir = cache_dir
        self._components: dict[str, LoadedComponent] = {}

    def load(self, path: Path, *, sha256: str | None = None) -> LoadedComponent:
        """Compile (or fetch from the cache) and check a component; `sha256`: the digest it must have."""
        data, digest = read_checked(path, sha256, "component", ComponentLoadError)
        cached = self._components.get(digest)
        if cached is not None:
            return cached
        component = self._compile(path, data, digest)
        exports = set(component.type.exports(self.engine))
        missing = {EXPORT_INIT, EXPORT_HANDLE_BATCH} - exports
        if missing:
            hint = " (built for the ebbtide:function@1 world: rebuild it with `ebbtide build`)" if "handle" in exports else ""
            raise ComponentLoadError(
                f"{path}: missing export(s) {', '.join(sorted(missing))} of the ebbtide:function/handler@2.0.0 world{hint}"
            )
        loaded = LoadedComponent(path, digest, component)
        self._components[digest] = loaded
        return loaded

    def _compile(self, path: Path, data: bytes, digest: str) -> wc.Component:
        # Compiling the ~18 MB Python component takes seconds; deserializing it, tens of milliseconds.
        def compile_component() -> wc.Component:
            try:
                return wc.Component(self.engine, data)
            except wasmtime.WasmtimeError as exc:
                raise ComponentLoadError(f"{path}: not a valid WebAssembly component: {exc}") from None

        cached_file = self._cache_dir / f"{digest}.cwasm-component" if self._cache_dir else None
        return compile_cached(cached_file, lambda file: wc.Component.deserialize_file(self.engine, file), compile_component)


class ComponentGuest:
    """One component instance (the `Guest` protocol); not thread-safe."""

    takes_batches = True

    def __init__(self, engine: ComponentEngine, loaded: LoadedComponent, limits: GuestLimits, config_json: bytes) -> None:
        self.module = loaded
        self.limits = limits
        self.input_capacity = MAX_INPUT
        self.path = loaded.path
        self._engine = engine
        self._config = config_json.decode()
        self._start()

    def _start(self) -> None:
        """A fresh instance, configured (also after a fault in a batch: see `_call`)."""
        loaded, limits = self.module, self.limits
        store = wasmtime.Store(self._engine.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_wasi(wasmtime.WasiConfig())  # nothing granted
        store.set_fuel(limits.fuel)
        try:
            instance = self._engine.linker.instantiate(store, loaded.component)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise GuestInitError(f"{loaded.path}: cannot instantiate: {exc}") from None
        init = instance.get_func(store, EXPORT_INIT)
        handle_batch = instance.get_func(store, EXPORT_HANDLE_BATCH)
        if init is None or handle_batch is None:
            raise GuestInitError(f"{loaded.path}: missing export `{EXPORT_INIT if init is None else EXPORT_HANDLE_BATCH}`")
        try:
            refused = init(store, self._config)
            init.post_return(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise GuestInitError(f"{loaded.path}: init failed: {cause(exc)}") from None
        if refused is not None:  # result<_, string>: None is ok, a string the reason
            raise GuestInitError(f"{loaded.path}: configuration refused: {refused}")
        self._store = store
        self._handle_batch = handle_batch

    def handle(self, subject: bytes, payload: bytes) -> tuple[abi.Status, bytes]:
        """Run the guest on one message (a batch of one). Raises InputTooLarge or GuestFault."""
        reply = self.handle_batch(((subject, payload),)).replies[0]
        if isinstance(reply, (GuestFault, InputTooLarge)):
            raise reply
        return reply

    def handle_batch(self, messages: Sequence[tuple[bytes, bytes]]) -> BatchResult:
        """Up to MAX_BATCH_BYTES of records per call; see `Guest.handle_batch` and BatchResult."""
        replies: list[GuestReply] = []
        total = len(messages)
        while len(replies) < total:
            start = len(replies)
            subject, payload = messages[start]
            if len(subject) + len(payload) > self.input_capacity:
                replies.append(
                    InputTooLarge(
                        f"message of {len(subject) + len(payload)} bytes exceeds the guest's input cap ({self.input_capacity})"
                    )
                )
                continue
            records, count = _pack(messages, start)
            if self._call(records, messages[start : start + count], replies):
                return BatchResult(replies, instance_failed=True)
        return BatchResult(replies)

    def _call(self, records: str, batch: Sequence[tuple[bytes, bytes]], replies: list[GuestReply]) -> bool:
        """One `handle-batch` call on the records of `batch`, with its messages' worth of fuel; appends their
        replies (up to and including a fault). Returns whether the instance failed.

        After a trap the component cannot say which message it was in (its memory is not the host's to
        read), so a trapped batch of several runs again one message per call on a fresh instance, each
        with its own fuel: the faulty message gets the fault it gets alone, and no other message is charged.
        """
        store = self._store
        store.set_fuel(self.limits.fuel * len(batch))
        try:
            output = self._handle_batch(store, records)
            self._handle_batch.post_return(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if len(batch) > 1:
                return self._rerun_one_by_one(batch, replies)
            replies.append(self._fault(exc))
            return True
        return _read_replies(output.encode("latin-1"), len(batch), replies)

    def _fault(self, exc: wasmtime.Trap | wasmtime.WasmtimeError) -> GuestFault:
        """What a failed one-message call stands for. A component's trap reaches wasmtime-py as a WasmtimeError
        without a trap code, so running out of fuel is told by the fuel left."""
        if isinstance(exc, wasmtime.Trap):
            return classify_trap(exc, self.limits)
        if self._store.get_fuel() == 0:
            return GuestFault("timeout", f"used its fuel limit of {self.limits.fuel} for one message")
        return GuestFault("trap", cause(exc))

    def _rerun_one_by_one(self, batch: Sequence[tuple[bytes, bytes]], replies: list[GuestReply]) -> bool:
        try:
            self._start()
        except GuestInitError as exc:  # the batch's first message is charged; the pool replaces the instance
            replies.append(GuestFault("trap", f"a batch trapped and a fresh instance did not start: {exc}"))
            return True
        result = handle_one_by_one(self, batch)
        replies += result.replies
        return result.instance_failed


def _pack(messages: Sequence[tuple[bytes, bytes]], start: int) -> tuple[str, int]:
    """Records for messages[start:] while they fit MAX_BATCH_BYTES, as Latin-1 text, and how many. Room for
    any one message within the input cap: a batch holds at least the first (which fits the cap); a later
    message too large for the cap ends it (it is refused next)."""
    records, count = abi.pack_records(messages, start, MAX_BATCH_BYTES + abi.BATCH_RECORD_HEADER_SIZE)
    return records.decode("latin-1"), count


def _raised(status: int, output: bytes) -> GuestFault:
    """The fault an output record with a status above RETRY stands for: the SDK's handler that raised (its
    text), or a status the world does not have."""
    if status == STATUS_RAISED:
        return GuestFault("trap", output.decode("utf-8", "replace"))
    return abi.unknown_status(status)


def _read_replies(data: bytes, count: int, replies: list[GuestReply]) -> bool:
    """Appends the replies in a `handle-batch` output; returns whether the instance failed (a handler
    that raised, or output that is not what the world says)."""
    done = abi.BATCH_COUNT.unpack_from(data, 0)[0] if len(data) >= abi.BATCH_HEADER_SIZE else "no"
    if done != count:
        replies.append(GuestFault("invalid-output", f"batch of {count}: {done} reply(s) reported"))
        return True
    return abi.read_output_records(data, count, len(data), replies.append, _raised)
