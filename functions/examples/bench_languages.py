"""Per-language figures for the same function (the receiver) in Zig, C, AssemblyScript and Python.

    .venv/bin/python functions/examples/bench_languages.py [--quick]

Builds the three (incrementally, into build/) and prints a Markdown table: module size, guest call cost
(measured as `ebbtide bench` measures the distributor: copy in, call, read output, decode effects; the
minimum of 5 runs) and instance start (new Store, instantiate, init with config). Python runs as a
component (componentize-py, functions/sdk-python, platform/ebbtide/runtime/component.py) when
componentize-py is installed; its row also gives the private memory each live instance adds, idle and
after a message (and its RSS, which counts the shared memory image again per instance).

A second table gives the cost per message of one call per message (ABI v1, `handle`) beside batches of
1, 16, 64 and 256 messages (ABI v2, `handle_batch`) on 256 different orders: copy in, call(s), read the
outputs (not decoded: that cost is the same either way). Its last row is tests/guests/batch.wat, a guest
that only copies each payload to its output: what the host and the call cost by themselves.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ebbtide.build import build_modules
from ebbtide.manifest import load_manifest
from ebbtide.runtime import GuestInstance, GuestLimits, WasmEngine, decode_effects
from ebbtide.runtime.guests import Guest, load_guest_module, start_guest
from ebbtide.workload.orders import encode_order, generate_orders

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "zig": ("receiver", "functions/receiver"),
    "c": ("receiver-c", "functions/examples/receiver-c"),
    "assemblyscript": ("receiver-assemblyscript", "functions/examples/receiver-assemblyscript"),
}
CONFIG = b'{"bucket":"outbox-express"}'
LIMITS = GuestLimits(memory_bytes=4 << 20, fuel=5_000_000)
BATCH_SIZES = (1, 16, 64, 256)
COPY_GUEST = REPO / "tests/guests/batch.wat"


def build(examples: dict[str, tuple[str, str]]) -> dict[str, Path]:
    with tempfile.TemporaryDirectory() as folder:
        modules = "".join(f'[modules.{m}]\nsource = "{REPO / f}"\nlang = "{lang}"\n' for lang, (m, f) in examples.items())
        path = Path(folder) / "ebbtide.toml"
        first = next(iter(examples.values()))[0]
        path.write_text(
            f'build_dir = "{REPO / "build"}"\n[streams.S]\nsubjects = ["s.>"]\n{modules}'
            f'[functions.f]\nmodule = "{first}"\ntrigger = "s.in"\n'
        )
        manifest = load_manifest(path)
        build_modules(manifest)
        return {lang: manifest.module_path(module) for lang, (module, _) in examples.items()}


def runs(fn, count: int) -> list[float]:
    """µs per call of fn, for 5 runs of `count` calls."""
    result = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        result.append((time.perf_counter() - started) / count * 1e6)
    return result


def rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 // 1024


PYTHON_LIMITS = GuestLimits(memory_bytes=32 << 20, fuel=50_000_000)


def python_guest() -> tuple[WasmEngine, object, Path] | None:
    """The Python receiver (a component), loaded; None when componentize-py is not installed."""
    if importlib.util.find_spec("componentize_py") is None:
        return None
    path = build({"python": ("receiver-python", "functions/examples/receiver-python")})["python"]
    engine = WasmEngine(cache_dir=REPO / "build/cache")
    return engine, load_guest_module(engine, path, "python"), path


def private_kib() -> int:
    """The process's private dirty memory: what instances cost beyond the pages they share. (RSS counts a
    page of the component's copy-on-write memory image again in every instance that maps it.)"""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def python_row(python: tuple[WasmEngine, object, Path], payload: bytes, calls: int, starts: int) -> str:
    """One call per message (a batch of one, as `handle`), instance start, and the private memory each live
    instance adds: idle (started and configured) and after it handled a message."""
    engine, loaded, path = python
    guest = start_guest(engine, loaded, PYTHON_LIMITS, CONFIG)
    for _ in range(100):
        decode_effects(guest.handle(b"orders.express", payload)[1])
    call = runs(lambda: decode_effects(guest.handle(b"orders.express", payload)[1]), calls)
    start = runs(lambda: start_guest(engine, loaded, PYTHON_LIMITS, CONFIG), starts)
    gc.collect()
    before, rss_before = private_kib(), rss_kib()
    live = [start_guest(engine, loaded, PYTHON_LIMITS, CONFIG) for _ in range(20)]
    idle, rss_idle = private_kib(), rss_kib()
    for g in live:
        g.handle(b"orders.express", payload)
    busy = private_kib()
    n = len(live)
    return (
        f"| python (component) | {path.stat().st_size:,} B | {min(call):.1f} µs ({statistics.median(call):.1f}) "
        f"| {min(start) / 1000:.2f} ms ({statistics.median(start) / 1000:.2f}) "
        f"| +{(idle - before) / n:.0f} KiB private idle, +{(busy - before) / n:.0f} KiB after a message "
        f"(+{(rss_idle - rss_before) / n / 1024:.1f} MiB RSS, mostly the shared image) |"
    )


def per_message(messages: list[tuple[bytes, bytes]], guest: Guest, batch: int | None, rounds: int) -> float:
    """µs per message over `rounds` passes on `messages` (min of 5 runs): one `handle` call per message
    when `batch` is None, else `handle_batch` on slices of `batch` messages."""
    if batch is None:
        handle = guest.handle
        one_pass = lambda: [handle(subject, payload) for subject, payload in messages]  # noqa: E731
    else:
        slices = [messages[i : i + batch] for i in range(0, len(messages), batch)]
        handle_batch = guest.handle_batch
        one_pass = lambda: [handle_batch(part) for part in slices]  # noqa: E731
    one_pass()  # warm-up, excluded
    return min(runs(one_pass, rounds)) / len(messages)


def batch_table(modules: dict[str, Path], python: tuple[WasmEngine, object, Path] | None, quick: bool) -> None:
    import wasmtime

    orders = [encode_order(order) for order in generate_orders(256, seed=2)]
    rounds = 20 if quick else 200
    sizes = " | ".join(f"batch {n}" for n in BATCH_SIZES)
    print(
        f"\nµs per message, 256 different orders ({min(map(len, orders))}-{max(map(len, orders))} bytes), "
        f"min of 5 x {rounds} passes: one call per message (v1) beside batches (v2)\n"
    )
    print(f"| guest | v1: one call per message | {sizes} |")
    print("|---|---:|" + "---:|" * len(BATCH_SIZES))
    engine = WasmEngine()
    with tempfile.TemporaryDirectory() as folder:
        copy_guest = Path(folder) / "batch.wasm"
        copy_guest.write_bytes(wasmtime.wat2wasm(COPY_GUEST.read_text()))
        guests = {
            **{f"receiver, {lang}": (path, CONFIG, "orders.express") for lang, path in modules.items()},
            "copy only (host + call cost)": (copy_guest, b"{}", "in.batch"),
        }
        for name, (path, config, subject) in guests.items():
            guest = GuestInstance(engine, engine.load(path), LIMITS, config)
            # batch.wat's input buffer is 4000 bytes: 256 orders are sent as several calls (as a pool would)
            messages = [(subject.encode(), payload) for payload in orders]
            cells = [per_message(messages, guest, batch, rounds) for batch in (None, *BATCH_SIZES)]
            print(f"| {name} | " + " | ".join(f"{cell:.2f}" for cell in cells) + " |")
    if python is not None:  # a component: `handle` is a batch of one; batches go as one call of at most 64 KiB
        python_engine, loaded, _ = python
        guest = start_guest(python_engine, loaded, PYTHON_LIMITS, CONFIG)
        messages = [(b"orders.express", payload) for payload in orders]
        cells = [per_message(messages, guest, batch, max(rounds // 10, 2)) for batch in (None, *BATCH_SIZES)]
        print("| receiver, python (component) | " + " | ".join(f"{cell:.2f}" for cell in cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer calls")
    args = parser.parse_args()
    calls, starts = (20_000, 2_000) if args.quick else (200_000, 20_000)
    payload = encode_order(generate_orders(1, seed=1)[0])
    subject = b"orders.express"
    engine = WasmEngine()
    print(f"receiver, {len(payload)}-byte order; min of 5 x {calls:,} calls (median in brackets)\n")
    print("| language | module size | guest call | instance start | instance memory |")
    print("|---|---:|---:|---:|---:|")
    modules = build(EXAMPLES)
    for lang, path in modules.items():
        module = engine.load(path)
        instance = GuestInstance(engine, module, LIMITS, CONFIG)
        for _ in range(1000):  # warm-up, excluded
            decode_effects(instance.handle(subject, payload)[1])
        call = runs(lambda instance=instance: decode_effects(instance.handle(subject, payload)[1]), calls)
        start = runs(lambda module=module: GuestInstance(engine, module, LIMITS, CONFIG), starts)
        print(
            f"| {lang} | {path.stat().st_size:,} B | {min(call):.2f} µs ({statistics.median(call):.2f}) "
            f"| {min(start):.1f} µs ({statistics.median(start):.1f}) | {instance.memory_size() // 1024} KiB linear memory |"
        )
    python = python_guest()
    if python is not None:
        print(python_row(python, payload, calls // 20, starts // 20))
    else:
        print("| python (component) | – | – | – | skipped: pip install componentize-py==0.25.1 |")
    batch_table(modules, python, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
