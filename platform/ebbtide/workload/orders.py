"""The reference workload: ZEISS-shaped orders, generated reproducibly from a seed."""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Literal

import msgspec

from ..errors import UsageError

if TYPE_CHECKING:
    from ..manifest import LoadedManifest

INGRESS_SUBJECT = "orders.ingress"  # the API: any client publishes an order's JSON here


class OrderItem(msgspec.Struct, rename="camel", frozen=True):
    order_item_id: int
    sku: str
    quantity: int


class Order(msgspec.Struct, rename="camel", frozen=True):
    order_id: int
    order_guid: str
    description: str
    first_name: str
    last_name: str
    delivery: Literal["Express", "Standard"]
    items: list[OrderItem]


def default_entry_subject(manifest: LoadedManifest) -> str:
    """Where `ebbtide publish` sends orders without --subject: the manifest's one entry subject (a trigger no
    function publishes to); with several (a function added by `ebbtide new` has an entry of its own),
    INGRESS_SUBJECT when it is one of them. UsageError otherwise: --subject must choose."""
    from ..broker.users import ingress_subjects

    subjects = ingress_subjects(manifest)
    if len(subjects) == 1:
        return subjects[0]
    if INGRESS_SUBJECT in subjects:
        return INGRESS_SUBJECT
    raise UsageError(
        f"{manifest.path}: {len(subjects)} entry subjects ({', '.join(subjects) or 'none'}) and none is "
        f"{INGRESS_SUBJECT}; choose one with --subject"
    )


_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Linus"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Perlman", "Torvalds"]
_PRODUCTS = ["lens", "frame", "coating", "case", "cloth", "objective", "eyepiece", "filter", "mount", "sensor"]

encode_order = msgspec.json.Encoder().encode


def generate_orders(count: int, seed: int = 1, first_id: int = 1, express_share: float = 0.3) -> list[Order]:
    """`count` orders with ids first_id.. ; each order, its `orderGuid` (the Nats-Msg-Id it is published with)
    included, comes from the seed and its order id alone: the same seed gives order 7 the same content and
    guid whatever the first id, and different order ids get different guids. (The guid once came from the
    seed and the order's position: `--first-id 1001` repeated the first run's guids, and JetStream dropped
    those orders as duplicates.)"""
    orders = []
    for order_id in range(first_id, first_id + count):
        rng = random.Random(f"{seed}/{order_id}")  # a string seed is hashed whole (sha512): no two pairs collide
        items = [
            OrderItem(
                order_item_id=i + 1,
                sku=f"{rng.choice(_PRODUCTS).upper()}-{rng.randrange(10_000, 99_999)}",
                quantity=rng.randrange(1, 10),
            )
            for i in range(rng.randrange(1, 5))
        ]
        orders.append(
            Order(
                order_id=order_id,
                order_guid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                description=f"Order {order_id}: {len(items)} item(s) for the lab",
                first_name=rng.choice(_FIRST),
                last_name=rng.choice(_LAST),
                delivery="Express" if rng.random() < express_share else "Standard",
                items=items,
            )
        )
    return orders


class OrderEvent(Order, rename="camel", frozen=True):
    """One event in an order's life: the order as it stands after it, and where it falls in the order's
    sequence (eventSeq 1, 2, ...). Stored as is, the outbox entry of an order is its latest event's state."""

    event: Literal["created", "amended", "cancelled"]
    event_seq: int


def event_name(event_seq: int, events: int) -> Literal["created", "amended", "cancelled"]:
    if event_seq == 1:
        return "created"
    return "cancelled" if event_seq == events else "amended"


def generate_order_events(
    count: int, events_per_order: int, seed: int = 1, first_id: int = 1, hot_share: float = 0.0
) -> list[OrderEvent]:
    """The events of `count` orders, `events_per_order` each (created, amended..., cancelled), in publish
    order: the orders interleaved at random, each order's events in their sequence. `hot_share` > 0 gives
    the first order that share of all events (a hot key: the skew case of the bench)."""
    if events_per_order < 1:
        raise ValueError("events_per_order must be at least 1")
    orders = generate_orders(count, seed, first_id)
    per_order = [events_per_order] * count
    if hot_share > 0 and count > 1:
        others = (count - 1) * events_per_order
        per_order[0] = max(events_per_order, round(hot_share * others / (1 - hot_share)))
    rng = random.Random(seed + 1)
    slots = [i for i, n in enumerate(per_order) for _ in range(n)]
    rng.shuffle(slots)
    seen = [0] * count
    events = []
    for i in slots:
        seen[i] += 1
        order = orders[i]
        quantity_change = 0 if seen[i] == 1 else seen[i]
        items = [msgspec.structs.replace(item, quantity=item.quantity + quantity_change) for item in order.items]
        fields = {f: getattr(order, f) for f in order.__struct_fields__ if f != "items"}
        events.append(OrderEvent(**fields, items=items, event=event_name(seen[i], per_order[i]), event_seq=seen[i]))
    return events


def event_msg_id(event: OrderEvent) -> str:
    """An event's Nats-Msg-Id: publishing it twice within the duplicate window stores it once."""
    return f"{event.order_guid}:{event.event_seq}"
