import pytest

from ebbtide.effects import Allowlist, EffectRefused, Outgoing
from ebbtide.runtime import GuestFault, KvPut, Publish, decode_effects
from ebbtide.runtime.abi import encode_effects

ALLOW = Allowlist(publish=["orders.express", "orders.standard", "audit.*"], kv=["outbox-express"])


def test_abi_round_trip() -> None:
    effects = [Publish("orders.express", b"{}"), KvPut("outbox-express", "42", b"\x00\xff")]
    data = encode_effects(effects)
    assert data[:2] == b"\x92\x93"  # array of 2; first effect is an array of 3
    assert decode_effects(data) == effects


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x91\x93\xa3bad\xa1x\xc4\x00",
        b"\x91\x92\xa7publish\xa1x",
        b"\x81\xa1a\x01",
        b"\x91\x93\xa7publish\x01\xc4\x00",
        b"\x91\x93\xa7publish\xa1\xff\xc4\x011",  # a subject that is not UTF-8
    ],
)
def test_undecodable_output_is_a_guest_fault(data: bytes) -> None:
    with pytest.raises(GuestFault) as fault:
        decode_effects(data)
    assert fault.value.kind == "invalid-output"


def test_allowed_effects_become_publishes() -> None:
    planned = ALLOW.plan([Publish("orders.standard", b"o"), Publish("audit.x", b"a"), KvPut("outbox-express", "7", b"v")])
    assert planned == [Outgoing("orders.standard", b"o"), Outgoing("audit.x", b"a"), Outgoing("$KV.outbox-express.7", b"v")]


@pytest.mark.parametrize(
    ("effect", "reason"),
    [
        (Publish("orders.other", b""), "'orders.other' is not allowed"),
        (Publish("orders.*", b""), "invalid subject"),
        (Publish("orders..express", b""), "invalid subject"),
        (Publish("$KV.outbox-express.1", b""), "not allowed"),
        (KvPut("outbox-standard", "1", b""), "bucket 'outbox-standard' is not allowed"),
        (KvPut("outbox-express", "a b", b""), "invalid key"),
        (KvPut("outbox-express", "a.*", b""), "invalid key"),
    ],
)
def test_refused_effects(effect, reason: str) -> None:
    with pytest.raises(EffectRefused, match=reason.replace("*", r"\*")):
        ALLOW.plan([Publish("orders.express", b""), effect])


def test_number_and_size_of_effects_are_limited() -> None:
    allowlist = Allowlist(["out.*"], ["bucket"], max_effects=2, max_effect_bytes=4)
    assert len(allowlist.plan([Publish("out.a", b"1234"), KvPut("bucket", "k", b"")])) == 2
    with pytest.raises(EffectRefused, match="3 effects for one message; limits.max_effects is 2"):
        allowlist.plan([Publish("out.a", b"")] * 3)
    with pytest.raises(EffectRefused, match="an effect of 5 bytes; limits.max_effect_bytes is 4"):
        allowlist.plan([KvPut("bucket", "k", b"12345")])
