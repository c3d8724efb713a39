"""The generated orders (`ebbtide publish`, the demo, the bench): reproducible from the seed, and each order's
`orderGuid`, its Nats-Msg-Id, its own (issue 27: `--first-id 1001` repeated the first run's ids, and
JetStream dropped 1,000 of 2,000 orders as duplicates without a word)."""

from __future__ import annotations

from ebbtide.workload.orders import generate_orders


def test_different_order_ids_get_different_guids_whatever_the_first_id() -> None:
    first = generate_orders(1000, seed=1)
    second = generate_orders(2000, seed=1, first_id=1001)
    guids = [order.order_guid for order in first + second]
    assert len(set(guids)) == 3000


def test_an_order_is_the_same_whatever_run_generates_it() -> None:
    """Order 7 of seed 1 has one content and one guid: published again, JetStream recognises it."""
    assert generate_orders(3, seed=1, first_id=6)[1] == generate_orders(10, seed=1)[6]
    assert generate_orders(50, seed=1) == generate_orders(50, seed=1)


def test_another_seed_gives_other_orders() -> None:
    one, two = generate_orders(20, seed=1), generate_orders(20, seed=2)
    assert not {o.order_guid for o in one} & {o.order_guid for o in two}
    assert [o.order_id for o in one] == [o.order_id for o in two] == list(range(1, 21))
