"""The receiver written in Zig, C and AssemblyScript: built by `ebbtide build`, run by the real host.

The three implement the same behaviour on three SDKs (functions/receiver, functions/examples/receiver-c,
functions/examples/receiver-assemblyscript), so one test covers them, and their outputs are compared
byte for byte on crafted and generated inputs.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient

from ebbtide.broker import ConfirmedPublisher, EmbeddedNats, publish_all
from ebbtide.broker.headers import H_ERROR, H_FUNCTION, H_REASON
from ebbtide.build import build_modules
from ebbtide.errors import GuestFault
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.runtime import GuestInitError, GuestInstance, GuestLimits, Status, WasmEngine, decode_effects
from ebbtide.runtime.abi import KvPut
from ebbtide.runtime.guest import handle_one_by_one
from ebbtide.runtime.guests import Guest, load_guest_module, start_guest
from ebbtide.stream_state import stream_state
from ebbtide.workload.orders import INGRESS_SUBJECT, Order, encode_order, generate_orders
from tests.components import require
from tests.conftest import BUILD_DIR, REPO, backlog, manifest_copy, provision_for, read_stream, wait_until

# lang -> (module name in the test manifests, source folder)
EXAMPLES = {
    "zig": ("receiver", "functions/receiver"),
    "c": ("receiver-c", "functions/examples/receiver-c"),
    "assemblyscript": ("receiver-assemblyscript", "functions/examples/receiver-assemblyscript"),
}
PYTHON_EXAMPLE = {"python": ("receiver-python", "functions/examples/receiver-python")}
CONFIG = b'{"bucket":"outbox-express"}'
LIMITS = GuestLimits(memory_bytes=4 << 20, fuel=5_000_000)
# A Python interpreter per instance: 199 pages (12.4 MiB) of memory at start, ~200,000 fuel per order.
COMPONENT_LIMITS = GuestLimits(memory_bytes=32 << 20, fuel=50_000_000)


def _with_receiver(text: str, lang: str) -> str:
    """The reference manifest text with its receiver module replaced by the `lang` example."""
    module, folder = EXAMPLES[lang]
    section = f'[modules.{module}]\nsource = "{REPO / folder}"\nlang = "{lang}"\n'
    text = re.sub(r"\[modules\.receiver\]\n(?:(?:source|sdk) = .*\n)+", section, text)
    return text.replace('module = "receiver"', f'module = "{module}"')


def _build(folder: Path, examples: dict[str, tuple[str, str]]) -> dict[str, Path]:
    """`examples` built by `ebbtide build` into the session's build folder (incrementally)."""
    modules = "".join(f'[modules.{m}]\nsource = "{REPO / f}"\nlang = "{lang}"\n' for lang, (m, f) in examples.items())
    path = folder / "ebbtide.toml"
    first = next(iter(examples.values()))[0]
    path.write_text(
        f'build_dir = "{BUILD_DIR}"\n[streams.S]\nsubjects = ["s.>"]\n{modules}'
        f'[functions.f]\nmodule = "{first}"\ntrigger = "s.in"\n'
    )
    manifest = load_manifest(path)
    build_modules(manifest)
    return {lang: manifest.module_path(module) for lang, (module, _) in examples.items()}


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three core-module receivers."""
    return _build(tmp_path_factory.mktemp("languages"), EXAMPLES)


@pytest.fixture(scope="module")
def instances(examples: dict[str, Path]) -> dict[str, GuestInstance]:
    engine = WasmEngine()
    return {lang: GuestInstance(engine, engine.load(path), LIMITS, CONFIG) for lang, path in examples.items()}


def test_examples_import_nothing_and_speak_abi_v2(examples: dict[str, Path]) -> None:
    engine = WasmEngine()
    for lang, path in examples.items():
        module = engine.load(path)  # checks imports (none) and the exports of ABI v1 and v2
        instance = GuestInstance(engine, module, LIMITS, CONFIG)
        assert module.layout is not None and module.layout.input_capacity == 65536, lang
        assert module.layout.abi_version == 2 and instance.takes_batches, lang
        assert instance.handle(b"orders.express", b'{"orderId": 1}')[0] == Status.OK, lang


@pytest.mark.parametrize("lang", list(EXAMPLES))
async def test_example_receiver_stores_orders_through_the_host(
    lang: str, examples: dict[str, Path], tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    path, _ = manifest_copy(tmp_path)
    path.write_text(_with_receiver(path.read_text(), lang))
    manifest = load_manifest(path)
    assert manifest.spec.modules[EXAMPLES[lang][0]].lang == lang
    build_modules(manifest)
    orders = generate_orders(1000, seed=21)
    bad = {
        b'{"delivery": "Express", "items": [1]}': "missing-order-id",
        b'{"orderId": "x"}': "invalid-order-id: expected an integer, got a string",
        b'{"orderId": 1, "orderId": 2}': 'malformed-json: duplicate key "orderId"',
        b"[]": "malformed-json: expected an object, got an array",
    }
    express = {o.order_id: o for o in orders if o.delivery == "Express"}
    standard = {o.order_id: o for o in orders if o.delivery == "Standard"}
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url):
        publisher = ConfirmedPublisher(nc)
        await publisher.start()
        confirmed, errors = await publish_all(publisher, INGRESS_SUBJECT, [(encode_order(o), o.order_guid) for o in orders])
        assert (confirmed, errors) == (len(orders), [])
        # straight to the receiver: inputs the distributor would have refused
        confirmed, errors = await publish_all(publisher, "orders.express", [(p, f"bad-{i}") for i, p in enumerate(bad)])
        assert (confirmed, errors) == (len(bad), [])

        async def all_stored() -> bool:
            counts = [(await stream_state(nc, f"KV_{b}")).messages for b in ("outbox-express", "outbox-standard")]
            return counts == [len(express), len(standard)]

        await wait_until(all_stored, timeout=60)
        dead = await read_stream(nc, "DLQ", subject="dlq.receiver-express", expected=len(bad))
        js = nc.jetstream()
        for bucket, expected in (("outbox-express", express), ("outbox-standard", standard)):
            kv = await js.key_value(bucket)
            for order_id in list(expected)[:50]:
                entry = await kv.get(str(order_id))
                assert msgspec.json.decode(entry.value, type=Order) == expected[order_id]
    assert {m.data: m.headers[H_ERROR] for m in dead} == bad
    assert all(m.headers[H_FUNCTION] == "receiver-express" for m in dead)
    assert await backlog(nc) == 0  # every input acked


CRAFTED = [
    b"",
    b" ",
    b"{}",
    b"[1]",
    b"null",
    b'"x"',
    b'{"orderId": 12}',
    b'{"orderId": -9223372036854775808}',
    b'{"orderId": 9223372036854775808}',
    b'{"orderId": -9223372036854775809}',
    b'{"orderId": 1.5}',
    b'{"orderId": 1e3}',
    b'{"orderId": "1"}',
    b'{"orderId": true}',
    b'{"orderId": null}',
    b'{"orderId": {}}',
    b'{"orderId":1,"orderId":2}',
    b'{"order\\u0049d": 5}',
    b'{"a":"\\ud800"}',
    b'{"a":"\\udc00"}',
    b'{"a":"\\ud800\\u0041"}',
    b'{"a":"\\ud800\\udc00","orderId":0}',
    b"\xff",
    b'{"a":"\xc3\xa9", "orderId": -0}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\xc3"}',
    b'{"a" 1}',
    b"[" * 64 + b"]" * 64,
    b"[" * 65 + b"]" * 65,
    b'{"orderId":01}',
    b'{"orderId": 3} x',
    b'{"x": tru}',
    b'{"x": [1,2,}',
    b'{"x":"\x01"}',
    b'{"x":"\\x"}',
    b'"abc',
    b'{"x":-}',
    b'{"x":1.}',
    b'{"x":1e}',
    b'{"x":1e+}',
    b'{"x":"\\u12"}',
    b"{,}",
    b'{"a":1,}',
    b'{"a":1 "b":2}',
    b"[1 2]",
    b'\t{\n"orderId"\r: 4 }\n',
    json.dumps({"orderId": 7, "s": "é" * 600}, ensure_ascii=False).encode(),
    b'{"orderId": 8, "pad": "' + b"x" * 65000 + b'"}',
]


def _outputs(instances: dict[str, GuestInstance], payload: bytes) -> dict[str, tuple[Status, bytes]]:
    return {lang: instance.handle(b"orders.express", payload) for lang, instance in instances.items()}


def test_same_output_in_every_language_for_crafted_inputs(instances: dict[str, GuestInstance]) -> None:
    for payload in CRAFTED:
        outputs = _outputs(instances, payload)
        assert len(set(outputs.values())) == 1, (payload[:60], outputs)
    ok = _outputs(instances, b'{"orderId": -42, "x": [1]}')["c"]
    assert ok[0] == Status.OK
    assert decode_effects(ok[1]) == [KvPut("outbox-express", "-42", b'{"orderId": -42, "x": [1]}')]


def _run_all(start: Callable[[], Guest], messages: list[tuple[bytes, bytes]], *, batches: bool) -> list[object]:
    """Every message's outcome (a fault as its text), on fresh instances after a fault, as a pool runs them."""
    outcomes: list[object] = []
    guest = start()
    while len(outcomes) < len(messages):
        rest = messages[len(outcomes) :]
        result = guest.handle_batch(rest) if batches else handle_one_by_one(guest, rest)
        outcomes += [str(o) if isinstance(o, Exception) else o for o in result.replies]
        if result.instance_failed:
            guest = start()
    return outcomes


def test_reference_distributor_gives_the_same_outcomes_in_a_batch(reference_manifest: LoadedManifest) -> None:
    """Faults included. The 65,000-byte payload needs more than the distributor's fuel limit: alone it times
    out; in a batch call it shares the fuel of the call's messages (docs/abi.md, "Faults in a batch"), so
    there it may also get the outcome it has without a limit, and no other."""
    fn = reference_manifest.function("distributor")
    engine = WasmEngine()
    module = engine.load(reference_manifest.module_path(fn.module))
    config = reference_manifest.config_json("distributor")

    def starter(fuel: int) -> Callable[[], Guest]:
        return lambda: GuestInstance(engine, module, GuestLimits(fn.limits.memory_mib << 20, fuel), config)

    start = starter(fn.limits.fuel)
    assert start().takes_batches
    payloads = (
        [encode_order(o) for o in generate_orders(200, seed=6)]
        + CRAFTED
        + [encode_order(o) for o in generate_orders(200, seed=7)]
    )
    messages = [(INGRESS_SUBJECT.encode(), payload) for payload in payloads]
    singles = _run_all(start, messages, batches=False)
    unlimited = _run_all(starter(fn.limits.fuel * 1000), messages, batches=False)
    timed_out = [i for i, outcome in enumerate(singles) if isinstance(outcome, str) and outcome.startswith("timeout")]
    assert [payloads[i][:22] for i in timed_out] == [b'{"orderId": 8, "pad": ']
    batched = _run_all(start, messages, batches=True)
    for i in timed_out:
        assert batched[i] in (singles[i], unlimited[i])
        batched[i] = singles[i]
    assert batched == singles


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["orderId", "a", "é", "x"]), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON_VALUES, ascii_only=st.booleans(), cut=st.integers(min_value=0, max_value=40), junk=st.binary(max_size=3))
def test_same_output_in_every_language_for_generated_json(
    instances: dict[str, GuestInstance], value: object, ascii_only: bool, cut: int, junk: bytes
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    payloads = (text, text[:cut], text[:cut] + junk + text[cut:])
    for payload in payloads:
        outputs = _outputs(instances, payload)
        assert len(set(outputs.values())) == 1, (payload[:80], outputs)
    for lang, instance in instances.items():  # and the same in a batch as alone
        batch = instance.handle_batch([(b"orders.express", payload) for payload in payloads])
        assert batch.replies == [instance.handle(b"orders.express", payload) for payload in payloads], lang


def test_batch_outputs_equal_single_outputs_byte_for_byte(instances: dict[str, GuestInstance]) -> None:
    """Every SDK loops the same handler over a batch: crafted inputs, orders, and thousands of small and
    middling messages. The receiver's output is a little larger than its input, so the output buffer fills
    before the input buffer: the SDK ends a call early, when too little room is left for any message or
    when the next message's output does not fit, and the host sends the rest in the next call."""
    small = [b'{"orderId": %d}' % i for i in range(3000)]
    middling = [b'{"orderId": %d, "pad": "%s"}' % (i, b"x" * (i * 397 % 1500)) for i in range(1000)]
    payloads = CRAFTED + [encode_order(o) for o in generate_orders(300, seed=5)] + small + middling
    messages = [(b"orders.express", payload) for payload in payloads]
    batches = {}
    for lang, instance in instances.items():
        singles = [instance.handle(subject, payload) for subject, payload in messages]
        calls: list[tuple[int, int]] = []  # (messages sent, messages handled) per ebbtide_handle_batch call
        raw = instance._handle_batch
        instance._handle_batch = lambda count, calls=calls, raw=raw: calls.append((count, handled := raw(count))) or handled  # type: ignore[method-assign]
        try:
            result = instance.handle_batch(messages)
        finally:
            instance._handle_batch = raw
        assert not result.instance_failed, lang
        assert result.replies == singles, lang
        assert any(handled < count for count, handled in calls), (lang, calls)  # the SDK stopped at a full output
        assert len(calls) < len(messages) / 50, (lang, len(calls))
        batches[lang] = result.replies
    assert batches["c"] == batches["zig"] == batches["assemblyscript"]


def test_instance_memory_does_not_grow_with_messages(instances: dict[str, GuestInstance]) -> None:
    payloads = [encode_order(o) for o in generate_orders(200, seed=3)] + CRAFTED
    for lang, instance in instances.items():
        instance.handle(b"orders.express", payloads[0])
        before = instance.memory_size()
        for _ in range(10):
            for payload in payloads:
                instance.handle(b"orders.express", payload)
        assert instance.memory_size() == before, lang


@pytest.mark.parametrize(
    "config, reason",
    [
        (b"{}", "config: bucket is required"),
        (b'{"bucket": ""}', "config: bucket is required"),
        (b'{"bucket": "a.b"}', "config: bucket must match [-_a-zA-Z0-9]+"),
        (b'{"bucket": 5}', "config: bucket must be a string"),
        (b'{"bucket": "a", "bucket": "b"}', "config: bucket is given more than once"),
        (b"[]", "config: expected a JSON object, got an array"),
        (b"{", "config: malformed-json: unexpected end of input at offset 1"),
    ],
)
def test_config_refusals_are_the_same(examples: dict[str, Path], config: bytes, reason: str) -> None:
    engine = WasmEngine()
    for path in examples.values():
        with pytest.raises(GuestInitError, match="configuration refused: " + re.escape(reason) + "$"):
            GuestInstance(engine, engine.load(path), LIMITS, config)


def require_componentize_py() -> None:
    """componentize-py builds Python guests; it is in the project's `test` extra (via `component`)."""
    missing = None if importlib.util.find_spec("componentize_py") else "pip install componentize-py==0.25.1 (the component extra)"
    require(missing, "componentize-py")


# -- Python through the component model (a separate runtime adapter, not the pool's core-module path) --------


async def test_python_pipeline_stores_orders_through_the_host(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    """`lang = "python"` in the manifest for the distributor and both receivers: built by componentize-py with
    the SDK, run by the pools as components; bad orders are dead-lettered with the function's reason."""
    require_componentize_py()
    path, _ = manifest_copy(tmp_path)
    text = path.read_text()
    # Modules of their own names: the session's build folder keeps the Zig "distributor" and "receiver".
    for module in ("distributor", "receiver"):
        section = f'[modules.{module}-python]\nsource = "{REPO / "functions/examples" / module}-python"\nlang = "python"\n'
        text = re.sub(rf"\[modules\.{module}\]\n(?:(?:source|sdk) = .*\n)+", section, text)
        text = text.replace(f'module = "{module}"', f'module = "{module}-python"')
    # A Python interpreter per instance: 12.4 MiB of memory at start, ~250,000 fuel per order.
    path.write_text(text.replace("memory_mib = 4, fuel = 5_000_000", "memory_mib = 32, fuel = 50_000_000"))
    manifest = load_manifest(path)
    build_modules(manifest)
    orders = generate_orders(200, seed=23)
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url) as host:
        assert {type(pool.module).__name__ for pool in host.pools.values()} == {"LoadedComponent"}
        publisher = ConfirmedPublisher(nc)
        await publisher.start()
        await publish_all(publisher, INGRESS_SUBJECT, [(encode_order(o), o.order_guid) for o in orders])
        await publish_all(publisher, INGRESS_SUBJECT, [(b'{"orderId": 1, "delivery": "sea", "items": [1]}', "sea")])
        await publish_all(publisher, "orders.express", [(b'{"orderId": "x"}', "bad")])

        async def all_stored() -> bool:
            counts = [(await stream_state(nc, f"KV_{b}")).messages for b in ("outbox-express", "outbox-standard")]
            return sum(counts) == len(orders)

        await wait_until(all_stored, timeout=120)
        dead_receiver = await read_stream(nc, "DLQ", subject="dlq.receiver-express", expected=1)
        dead_distributor = await read_stream(nc, "DLQ", subject="dlq.distributor", expected=1)
        order = next(o for o in orders if o.delivery == "Standard")
        entry = await (await nc.jetstream().key_value("outbox-standard")).get(str(order.order_id))
        assert msgspec.json.decode(entry.value, type=Order) == order
    assert dead_receiver[0].headers[H_ERROR].startswith("invalid-order-id: expected an integer, got a string")
    assert dead_distributor[0].headers[H_ERROR] == 'unknown-delivery: "sea"'


PYTHON_DISTRIBUTOR = {"python": ("distributor-python", "functions/examples/distributor-python")}


@pytest.fixture(scope="module")
def python_component(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_componentize_py()
    return _build(tmp_path_factory.mktemp("python"), PYTHON_EXAMPLE)["python"]


@pytest.fixture(scope="module")
def python_receiver(python_component: Path, examples: dict[str, Path]) -> tuple[Guest, GuestInstance]:
    """The Python receiver as a component, next to the Zig one for comparison."""
    engine = WasmEngine(cache_dir=BUILD_DIR / "cache")
    guest = start_guest(engine, load_guest_module(engine, python_component, "python"), COMPONENT_LIMITS, CONFIG)
    zig = GuestInstance(engine, engine.load(examples["zig"]), LIMITS, CONFIG)
    return guest, zig


def _same_as_zig(guest: Guest, zig: Guest, messages: list[tuple[bytes, bytes]]) -> int:
    """Python's outcomes against Zig's, alone and in one batch: OK outputs (the effects) byte for byte; for a
    rejection the same status and the same kind of reason (Python's json words syntax errors its own way).
    Returns how many were OK."""
    batched = guest.handle_batch(messages)
    assert not batched.instance_failed and len(batched.replies) == len(messages)
    ok = 0
    for (subject, payload), in_batch in zip(messages, batched.replies):
        status, output = guest.handle(subject, payload)
        assert in_batch == (status, output), payload[:60]
        zig_status, zig_output = zig.handle(subject, payload)
        assert status == zig_status, (payload[:60], output, zig_output)
        if status == Status.OK:
            assert output == zig_output, payload[:60]
            ok += 1
        else:
            assert output.split(b":")[0] == zig_output.split(b":")[0], (payload[:60], output, zig_output)
    return ok


def test_python_receiver_gives_the_zig_receivers_effects_byte_for_byte(python_receiver) -> None:
    guest, zig = python_receiver
    assert guest.takes_batches
    messages = [(b"orders.express", encode_order(order)) for order in generate_orders(100, seed=8)]
    assert _same_as_zig(guest, zig, messages) == 100
    assert _same_as_zig(guest, zig, [(b"orders.express", payload) for payload in CRAFTED]) >= 4


def test_python_distributor_routes_like_the_zig_distributor(
    tmp_path_factory: pytest.TempPathFactory, reference_manifest: LoadedManifest
) -> None:
    require_componentize_py()
    path = _build(tmp_path_factory.mktemp("python-distributor"), PYTHON_DISTRIBUTOR)["python"]
    engine = WasmEngine(cache_dir=BUILD_DIR / "cache")
    fn = reference_manifest.function("distributor")
    config = reference_manifest.config_json("distributor")
    guest = start_guest(engine, load_guest_module(engine, path, "python"), COMPONENT_LIMITS, config)
    zig = GuestInstance(
        engine,
        engine.load(reference_manifest.module_path(fn.module)),
        GuestLimits(fn.limits.memory_mib << 20, fn.limits.fuel * 10),
        config,
    )
    orders = [(INGRESS_SUBJECT.encode(), encode_order(order)) for order in generate_orders(200, seed=6)]
    assert _same_as_zig(guest, zig, orders) == 200
    odd = [
        b'{"orderId":1,"delivery":"EXPRESS","items":[1]}',
        b'{"orderId":1,"delivery":"Sea","items":[1]}',
        b'{"orderId":1,"delivery":7,"items":[1]}',
        b'{"orderId":1,"items":[1]}',
        b'{"orderId":1,"delivery":"standard"}',
        b'{"orderId":1,"delivery":"standard","items":[]}',
        b'{"orderId":1,"delivery":"standard","items":{}}',
        rb'{"orderId":1,"delivery":"expr\u0065ss","items":[0]}',
    ]
    assert _same_as_zig(guest, zig, [(INGRESS_SUBJECT.encode(), p) for p in odd + CRAFTED]) == 2
    with pytest.raises(GuestInitError, match="configuration refused: config: express_subject is not a valid NATS subject$"):
        start_guest(engine, load_guest_module(engine, path, "python"), COMPONENT_LIMITS, b'{"express_subject":"a.*"}')


def test_a_runaway_message_in_a_python_batch_is_the_only_one_charged(python_component: Path) -> None:
    """A trap inside a batch call does not say which message it was in: the component runs the batch again
    one message per call on a fresh instance, so only the runaway times out and the others keep their outcome."""
    engine = WasmEngine(cache_dir=BUILD_DIR / "cache")
    module = load_guest_module(engine, python_component, "python")
    limits = GuestLimits(memory_bytes=32 << 20, fuel=2_000_000)  # ~200,000 per order; a 60 KB order needs more
    big = b'{"orderId": 8, "items": [' + b",".join([b'{"sku": "x", "quantity": 1}'] * 2000) + b"]}"
    messages = [(b"orders.express", encode_order(order)) for order in generate_orders(6, seed=3)]
    messages.insert(3, (b"orders.express", big))
    guest = start_guest(engine, module, limits, CONFIG)
    with pytest.raises(GuestFault, match="fuel limit"):
        guest.handle(*messages[3])
    result = start_guest(engine, module, limits, CONFIG).handle_batch(messages)
    assert result.instance_failed and len(result.replies) == 4
    assert [outcome[0] for outcome in result.replies[:3]] == [Status.OK] * 3
    assert isinstance(result.replies[3], GuestFault) and result.replies[3].kind == "timeout"
    rest = start_guest(engine, module, limits, CONFIG).handle_batch(messages[4:])
    assert [outcome[0] for outcome in rest.replies] == [Status.OK] * 3


def test_python_component_refuses_a_bad_config(python_component: Path) -> None:
    engine = WasmEngine(cache_dir=BUILD_DIR / "cache")
    module = load_guest_module(engine, python_component, "python")
    with pytest.raises(GuestInitError, match="configuration refused: config: bucket is required$"):
        start_guest(engine, module, COMPONENT_LIMITS, b"{}")


async def test_python_faults_retries_and_dead_letters_through_the_host(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """tests/guests/python-chaos: a rejection is dead-lettered at once; a retry, an exception and a runaway
    are retried up to max_deliver, on a fresh instance after each fault, then dead-lettered with why."""
    require_componentize_py()
    path = tmp_path / "ebbtide.toml"
    path.write_text(f"""
build_dir = "{BUILD_DIR}"
[streams.TEST]
subjects = ["in.>", "test.>"]
retention = "workqueue"

[modules.python-chaos]
source = "{REPO / "tests/guests/python-chaos"}"
lang = "python"

[functions.chaos]
module = "python-chaos"
trigger = "in.chaos"
publish = ["test.out"]
scale = {{ min = 1, max = 1 }}
limits = {{ memory_mib = 32, fuel = 5_000_000, max_payload = 4096 }}
retry = {{ max_deliver = 3, backoff_ms = [50, 100] }}
""")
    manifest = load_manifest(path)
    build_modules(manifest)
    js = nc.jetstream()
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url) as host:
        for payload in (b"good-1", b"X-no", b"R-later", b"E-boom", b"L-loop", b"good-2"):
            await js.publish("in.chaos", payload)
        dead = await read_stream(nc, "DLQ", "dlq.chaos", expected=4)
        out = await read_stream(nc, "TEST", "test.out", expected=2)
        stats = host.pools["chaos"].stats
        assert stats.guest_faults == {"trap": 3, "timeout": 3}
        assert stats.retried == 6  # R, E and L: twice each
        assert stats.instances_started == 1 + 6  # one worker, and a fresh instance after each fault
    assert sorted(m.data for m in out) == [b"good-1", b"good-2"]
    errors = {m.data: m.headers[H_ERROR] for m in dead}
    assert errors[b"X-no"] == "refused by the python chaos guest"
    assert errors[b"R-later"].endswith("guest asked to retry: try again later")
    assert errors[b"E-boom"].endswith("guest fault: trap: RuntimeError: boom")
    assert errors[b"L-loop"].endswith("guest fault: timeout: used its fuel limit of 5000000 for one message")
    assert {m.headers[H_REASON] for m in dead} == {"rejected", "retries-exhausted"}
