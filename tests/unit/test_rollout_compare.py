from ebbtide.errors import GuestFault, InputTooLarge
from ebbtide.rollout.compare import RecordedReply, Verdict, compare, recorded, render
from ebbtide.runtime.abi import KvPut, Publish, Status, encode_effects


def ok(*effects: Publish | KvPut) -> RecordedReply:
    return recorded((Status.OK, encode_effects(list(effects))))


def test_same_effects_in_the_same_order_are_same() -> None:
    assert compare(ok(Publish("orders.express", b"{}")), ok(Publish("orders.express", b"{}"))) is Verdict.SAME


def test_a_different_subject_or_order_is_different() -> None:
    a, b = Publish("orders.express", b"1"), Publish("orders.standard", b"1")
    assert compare(ok(a), ok(b)) is Verdict.DIFFERENT
    assert compare(ok(a, b), ok(b, a)) is Verdict.DIFFERENT
    assert compare(ok(a), recorded((Status.REJECT, b"no"))) is Verdict.DIFFERENT


def test_a_candidate_fault_is_its_own_verdict_even_when_live_faulted_too() -> None:
    fault = recorded(GuestFault("trap", "unreachable"))
    assert fault.status == "fault"
    assert compare(ok(), fault) is Verdict.CANDIDATE_FAULT
    assert compare(fault, fault) is Verdict.CANDIDATE_FAULT
    assert compare(ok(), recorded(InputTooLarge("too big"))) is Verdict.CANDIDATE_FAULT
    assert compare(fault, ok()) is Verdict.DIFFERENT


def test_render_shows_the_changed_effect_only() -> None:
    live = ok(KvPut("outbox", "k1", b'{"a":1}'), Publish("orders.express", b"x"))
    candidate = ok(KvPut("outbox", "k1", b'{"a":1}'), Publish("orders.standard", b"x"))
    text = render(live, candidate)
    assert "-publish orders.express: x" in text and "+publish orders.standard: x" in text
    assert " kv_put outbox/k1" in text
    assert render(live, live) == "same"


def test_a_sample_survives_its_encoding() -> None:
    from ebbtide.rollout.samples import Sample, decode_sample, encode_sample, sample_subject

    sample = Sample("receiver", Verdict.DIFFERENT, "orders.express", b'{"x":1}', ok(), ok(Publish("a", b"\xff")), "ab" * 32, 1)
    assert decode_sample(encode_sample(sample)) == sample
    assert sample_subject("receiver", Verdict.CANDIDATE_FAULT) == "ebbtide.shadow.receiver.candidate_fault"


def test_the_command_line_takes_every_verdict() -> None:
    from ebbtide.cli import _parser

    for verdict in Verdict:
        args = _parser().parse_args(["shadow", "report", "distributor", "--verdict", verdict.value])
        assert args.verdict == [verdict.value]
