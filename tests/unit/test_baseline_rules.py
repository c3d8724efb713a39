"""The FastStream baseline's rules in Python decide as the Wasm distributor and receiver do (real guests)."""

from __future__ import annotations

import pytest

from ebbtide.manifest import LoadedManifest
from ebbtide.runtime import GuestInstance, GuestLimits, Status, WasmEngine, decode_effects
from ebbtide.runtime.guest import MIB
from ebbtide.workload.baselines.rules import Rejected, outbox_key, route

ORDER = (
    b'{"orderId": 7, "orderGuid": "g", "description": "d", "firstName": "A", "lastName": "B", '
    b'"delivery": "Express", "items": [{"orderItemId": 1, "sku": "LENS-1", "quantity": 2}]}'
)
CASES = [
    ORDER,
    ORDER.replace(b'"Express"', b'"standard"'),
    ORDER.replace(b'"Express"', b'"eXpReSs"'),
    ORDER.replace(b'"Express"', b'"Overnight"'),
    ORDER.replace(b'"Express"', b"3"),
    ORDER.replace(b'"delivery": "Express", ', b""),
    ORDER.replace(b'"orderId": 7', b'"orderId": "7"'),
    ORDER.replace(b'"orderId": 7', b'"orderId": 7.5'),
    ORDER.replace(b'"orderId": 7', b'"orderId": true'),
    ORDER.replace(b'"orderId": 7', b'"orderId": 99999999999999999999'),
    ORDER.replace(b'"orderId": 7', b'"orderId": -9223372036854775808'),
    ORDER.replace(b'"orderId": 7, ', b""),
    ORDER.replace(b'"orderId": 7', b'"orderId": 7, "orderId": 8'),
    ORDER.replace(b'"delivery": "Express"', b'"delivery": "Express", "delivery": "Standard"'),
    ORDER.replace(b'[{"orderItemId": 1, "sku": "LENS-1", "quantity": 2}]', b"[]"),
    ORDER.replace(b'[{"orderItemId": 1, "sku": "LENS-1", "quantity": 2}]', b'{"a": 1}'),
    ORDER.replace(b', "items": [{"orderItemId": 1, "sku": "LENS-1", "quantity": 2}]', b""),
    b"[1, 2]",
    b'"just a string"',
    b"{not json",
    b"",
    b'{"orderId": NaN, "delivery": "Express", "items": [1]}',
    b"\xff\xfe",
]


def _guest(manifest: LoadedManifest, function: str) -> GuestInstance:
    engine = WasmEngine()
    fn = manifest.function(function)
    return GuestInstance(
        engine,
        engine.load(manifest.module_path(fn.module)),
        GuestLimits(fn.limits.memory_mib * MIB, fn.limits.fuel),
        manifest.config_json(function),
    )


def _python(rule, payload: bytes) -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    try:
        return True, rule(payload)
    except Rejected as reason:
        return False, str(reason).split(":")[0]


@pytest.mark.parametrize("payload", CASES)
def test_distributor_rules_match_the_wasm_distributor(reference_manifest: LoadedManifest, payload: bytes) -> None:
    status, output = _guest(reference_manifest, "distributor").handle(b"orders.ingress", payload)
    accepted, what = _python(route, payload)
    assert accepted == (status is Status.OK), (payload, output)
    if accepted:
        [effect] = decode_effects(output)
        assert effect.subject == what and effect.payload == payload
    else:
        assert output.decode().split(":")[0] == what


@pytest.mark.parametrize("payload", CASES)
def test_receiver_rules_match_the_wasm_receiver(reference_manifest: LoadedManifest, payload: bytes) -> None:
    status, output = _guest(reference_manifest, "receiver-express").handle(b"orders.express", payload)
    accepted, what = _python(outbox_key, payload)
    assert accepted == (status is Status.OK), (payload, output)
    if accepted:
        [effect] = decode_effects(output)
        assert (effect.bucket, effect.key, effect.value) == ("outbox-express", what, payload)
    else:
        assert output.decode().split(":")[0] == what


def test_raw_pass_through_routes_on_bytes_without_validating() -> None:
    from ebbtide.workload.baselines.raw_pipeline import output_subject

    compact = ORDER.replace(b": ", b":").replace(b", ", b",")  # what encode_order writes
    assert output_subject("distributor", compact) == "orders.express"
    assert output_subject("distributor", compact.replace(b'"Express"', b'"Standard"')) == "orders.standard"
    assert output_subject("distributor", b"anything") == "orders.standard"  # no validation: the limit
    assert output_subject("receiver-express", compact) == "$KV.outbox-express.7"
    with pytest.raises(ValueError, match="no orderId"):
        output_subject("receiver-standard", b"{}")
