"""The reference workload: ZEISS-shaped orders, generated reproducibly from a seed."""

from __future__ import annotations

import random
import uuid
from typing import Literal

import msgspec

INGRESS_SUBJECT = "orders.ingress"


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


_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Linus"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Perlman", "Torvalds"]
_PRODUCTS = ["lens", "frame", "coating", "case", "cloth", "objective", "eyepiece", "filter", "mount", "sensor"]

encode_order = msgspec.json.Encoder().encode


def generate_orders(count: int, seed: int = 1, first_id: int = 1, express_share: float = 0.3) -> list[Order]:
    """`count` orders with ids first_id.. ; the same seed gives the same orders."""
    rng = random.Random(seed)
    orders = []
    for order_id in range(first_id, first_id + count):
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
