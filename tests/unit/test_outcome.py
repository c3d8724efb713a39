"""The outcome policy on its own: what becomes of a message, from what happened to it."""

from __future__ import annotations

import pytest

from ebbtide.deadletter import Reason
from ebbtide.effects import Outgoing
from ebbtide.manifest import LimitsSection, RetrySection
from ebbtide.outcome import (
    Ack,
    DeadLetter,
    Declined,
    Effects,
    Faulted,
    Refused,
    Retry,
    TooLarge,
    after_guest,
    after_host_error,
    after_unconfirmed,
    backoff_s,
    check_input,
    transient,
)
from ebbtide.runtime import Status

RETRY = RetrySection(max_deliver=3, backoff_ms=[50, 100])
LIMITS = LimitsSection(max_payload=4096, max_header_bytes=100)


def test_inputs_within_the_limits_go_to_the_guest() -> None:
    assert check_input(4096, 100, LIMITS) is None
    assert check_input(0, 0, LIMITS) is None


def test_a_payload_over_the_limit_is_dead_lettered_unread() -> None:
    assert check_input(4097, 0, LIMITS) == DeadLetter(
        Reason.PAYLOAD_TOO_LARGE, "payload of 4097 bytes exceeds limits.max_payload (4096)"
    )


def test_headers_over_the_limit_are_dead_lettered_unread() -> None:
    assert check_input(10, 101, LIMITS) == DeadLetter(
        Reason.HEADERS_TOO_LARGE, "headers of 101 bytes exceed limits.max_header_bytes (100)"
    )


def test_the_payload_is_checked_before_the_headers() -> None:
    outcome = check_input(5000, 5000, LIMITS)
    assert isinstance(outcome, DeadLetter) and outcome.reason is Reason.PAYLOAD_TOO_LARGE


def test_effects_within_the_allowlist_are_acked_after_they_are_sent() -> None:
    effects = [Outgoing("test.out", b"a"), Outgoing("test.out", b"b")]
    assert after_guest(Effects(effects), 1, RETRY) == Ack(effects)
    assert after_guest(Effects([]), 1, RETRY) == Ack([])  # no effects: acked at once


def test_reject_is_permanent_whatever_the_delivery() -> None:
    for delivered in (1, 2, 3, 10):
        assert after_guest(Declined(Status.REJECT, "bad order"), delivered, RETRY) == DeadLetter(Reason.REJECTED, "bad order")


def test_retry_backs_off_then_dead_letters_at_max_deliver() -> None:
    declined = Declined(Status.RETRY, "db busy")
    assert after_guest(declined, 1, RETRY) == Retry(0.05, "guest asked to retry: db busy")
    assert after_guest(declined, 2, RETRY) == Retry(0.1, "guest asked to retry: db busy")
    assert after_guest(declined, 3, RETRY) == DeadLetter(
        Reason.RETRIES_EXHAUSTED, "failed 3 deliveries; last error: guest asked to retry: db busy"
    )


def test_the_last_backoff_repeats() -> None:
    retry = RetrySection(max_deliver=10, backoff_ms=[200, 1000, 5000])
    assert [backoff_s(d, retry) for d in range(1, 7)] == [0.2, 1.0, 5.0, 5.0, 5.0, 5.0]


def test_a_guest_fault_is_transient() -> None:
    fault = Faulted("trap", "trap: wasm trap: unreachable")
    assert after_guest(fault, 1, RETRY) == Retry(0.05, "guest fault: trap: wasm trap: unreachable")
    exhausted = after_guest(fault, 3, RETRY)
    assert exhausted == DeadLetter(
        Reason.RETRIES_EXHAUSTED, "failed 3 deliveries; last error: guest fault: trap: wasm trap: unreachable"
    )


def test_a_refused_effect_and_an_input_too_large_for_the_guest_are_permanent() -> None:
    assert after_guest(Refused("publish to 'x' is not allowed"), 1, RETRY) == DeadLetter(
        Reason.EFFECT_REFUSED, "publish to 'x' is not allowed"
    )
    assert after_guest(TooLarge("input of 40000 bytes exceeds the guest's buffer"), 1, RETRY) == DeadLetter(
        Reason.PAYLOAD_TOO_LARGE, "input of 40000 bytes exceeds the guest's buffer"
    )


def test_max_deliver_one_dead_letters_the_first_transient_failure() -> None:
    once = RetrySection(max_deliver=1, backoff_ms=[50])
    assert transient("boom", 1, once) == DeadLetter(Reason.RETRIES_EXHAUSTED, "failed 1 deliveries; last error: boom")


def test_a_host_error_is_retried_like_a_transient_failure() -> None:
    assert after_host_error(RuntimeError("bug"), 1, RETRY) == Retry(0.05, "host error: RuntimeError('bug')")
    assert after_host_error(RuntimeError("bug"), 3, RETRY).reason is Reason.RETRIES_EXHAUSTED  # type: ignore[union-attr]


def test_unconfirmed_effects_are_a_transient_failure() -> None:
    ack = Ack([Outgoing("test.out", b"x")])
    assert after_unconfirmed(ack, "no PubAck within 5 s", 1, RETRY) == Retry(0.05, "effects not confirmed: no PubAck within 5 s")
    assert after_unconfirmed(ack, "no PubAck within 5 s", 3, RETRY) == DeadLetter(
        Reason.RETRIES_EXHAUSTED, "failed 3 deliveries; last error: effects not confirmed: no PubAck within 5 s"
    )


@pytest.mark.parametrize("delivered", [1, 3, 50])
def test_effects_the_server_never_answered_are_retried_without_using_up_the_retries(delivered: int) -> None:
    ack = Ack([Outgoing("test.out", b"x")])
    outcome = after_unconfirmed(ack, "no PubAck within 1 s", delivered, RETRY, server_side=True)
    assert outcome == Retry(backoff_s(delivered, RETRY), "effects not confirmed: no PubAck within 1 s")


@pytest.mark.parametrize("delivered", [1, 3, 50])
def test_an_unconfirmed_dead_letter_is_tried_again_later_never_dead_lettered_twice(delivered: int) -> None:
    letter = DeadLetter(Reason.REJECTED, "bad order")
    outcome = after_unconfirmed(letter, "no stream", delivered, RETRY)
    assert isinstance(outcome, Retry) and outcome.delay_s == 0.05  # the first backoff, whatever the delivery


def test_something_else_than_a_guest_result_is_a_bug() -> None:
    with pytest.raises(TypeError):
        after_guest("ok", 1, RETRY)  # type: ignore[arg-type]
