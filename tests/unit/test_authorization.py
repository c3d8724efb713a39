"""The permissions generated from the reference manifest: each user gets exactly what its host uses."""

from __future__ import annotations

from pathlib import Path

from ebbtide.broker.authorization import function_permissions, inbox_prefix, ingress_permissions
from ebbtide.broker.provision import streams_needed
from ebbtide.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
MANIFEST = load_manifest(REPO / "ebbtide.toml")


def test_distributor_may_route_but_not_write_the_outbox() -> None:
    permissions = function_permissions(MANIFEST, "distributor")
    assert {"orders.express", "orders.standard", "dlq.distributor", "$JS.ACK.ORDERS.distributor.>",
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.distributor", "ebbtide.status.distributor"} <= set(permissions.publish)
    assert not any(s.startswith("$KV.") or "receiver" in s or s == "orders.ingress" for s in permissions.publish)
    assert permissions.subscribe == [f"{inbox_prefix('distributor')}.>", "orders.ingress", "ebbtide.status-request"]


def test_receiver_may_write_only_its_own_bucket() -> None:
    permissions = function_permissions(MANIFEST, "receiver-express")
    assert "$KV.outbox-express.>" in permissions.publish
    assert not any("outbox-standard" in s or s.startswith("orders.") for s in permissions.publish)
    assert streams_needed(MANIFEST, ["receiver-express"]) == ["DLQ", "KV_outbox-express", "ORDERS"]


def test_ingress_may_only_publish_orders() -> None:
    permissions = ingress_permissions(MANIFEST)
    assert permissions.publish == ["orders.ingress"]
    assert permissions.subscribe == ["_INBOX.>"]  # JetStream acks, at any NATS client's default inbox
