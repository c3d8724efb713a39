"""The permissions generated from the reference manifest: each user gets exactly what its host uses."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import bcrypt

from ebbtide.broker.access import ServerAccess
from ebbtide.broker.credentials import NatsAuth
from ebbtide.broker.provisioning import streams_needed
from ebbtide.broker.users import (
    BCRYPT_COST,
    INGRESS_ENV,
    function_permissions,
    inbox_prefix,
    ingress_permissions,
    observer_permissions,
    rollout_publish,
    write_bundle,
)
from ebbtide.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
MANIFEST = load_manifest(REPO / "ebbtide.toml")


def test_distributor_may_route_but_not_write_the_outbox() -> None:
    permissions = function_permissions(MANIFEST, "distributor")
    assert {
        "orders.express",
        "orders.standard",
        "dlq.distributor",
        "$JS.ACK.ORDERS.distributor.>",
        "$JS.API.CONSUMER.MSG.NEXT.ORDERS.distributor",
        "ebbtide.status_reports.distributor",
    } <= set(permissions.publish)
    outside_rollouts = set(permissions.publish) - set(rollout_publish("distributor"))
    assert not any(s.startswith("$KV.") or "receiver" in s or s == "orders.ingress" for s in outside_rollouts)
    assert permissions.subscribe == [
        f"{inbox_prefix('distributor')}.>",
        "orders.ingress",
        "ebbtide.status_reports-request",
        "$KV.ebbtide-rollouts.distributor",  # its own rollout record's writes: the follower's bell
    ]


def test_receiver_may_write_only_its_own_bucket() -> None:
    permissions = function_permissions(MANIFEST, "receiver-express")
    assert "$KV.outbox-express.>" in permissions.publish
    assert not any("outbox-standard" in s or s.startswith("orders.") for s in permissions.publish)
    assert streams_needed(MANIFEST, ["receiver-express"]) == ["DLQ", "KV_outbox-express", "ORDERS"]


def test_ingress_may_only_publish_orders() -> None:
    permissions = ingress_permissions(MANIFEST)
    assert permissions.publish == ["orders.ingress"]
    assert permissions.subscribe == ["_INBOX.>"]  # JetStream acks, at any NATS client's default inbox


def test_no_function_holds_jetstream_administration() -> None:
    """Its own consumer's info and pull requests, and reading a message of its trigger's stream (the age of its
    oldest unhandled one), are its only $JS.API subjects on the pipeline's streams: no create, update, delete,
    purge, no wildcard. Beside them, what following rollouts takes (below)."""
    for function in MANIFEST.spec.functions:
        publish = function_permissions(MANIFEST, function).publish
        api = [s for s in publish if s.startswith("$JS.API") and s not in rollout_publish(function)]
        assert api == [
            f"$JS.API.CONSUMER.INFO.ORDERS.{function}",
            f"$JS.API.CONSUMER.MSG.NEXT.ORDERS.{function}",
            "$JS.API.STREAM.MSG.GET.ORDERS",
        ]


def test_following_rollouts_reads_two_streams_and_writes_only_its_own_record() -> None:
    """A host reads rollout records and downloads candidates (stream info and message reads of those two
    streams; no consumer created, no stream changed), writes its own function's record (a canary's
    rollback) and its own shadow samples."""
    rollouts = rollout_publish("distributor")
    assert "$JS.API.STREAM.NAMES" not in rollouts
    for subject in (s for s in rollouts if s.startswith("$JS.API")):
        assert any(f".{stream}" in subject for stream in ("KV_ebbtide-rollouts", "OBJ_ebbtide-modules")), subject
        assert not any(word in subject for word in ("UPDATE", "PURGE", "CREATE", "DELETE", "CONSUMER")), subject
    writes = [s for s in rollouts if not s.startswith("$JS.API")]
    assert writes == ["$KV.ebbtide-rollouts.distributor", "ebbtide.shadow.distributor.>"]


def test_observer_only_reads() -> None:
    permissions = observer_permissions(MANIFEST)
    assert permissions.publish == [
        *(
            f"$JS.API.STREAM.{op}.{stream}"
            for stream in ("DLQ", "ORDERS", "SHADOW", "KV_ebbtide-rollouts")  # the rollout records: `console`
            for op in ("INFO", "MSG.GET")
        ),
        *(
            f"$JS.API.{op}.KV_{bucket}{tail}"
            for bucket in ("outbox-express", "outbox-standard")
            for op, tail in (
                ("STREAM.INFO", ""),
                ("STREAM.MSG.GET", ""),
                ("DIRECT.GET", ""),
                ("DIRECT.GET", ".>"),
                ("CONSUMER.CREATE", ""),  # a KV client's keys, history, watch: an ordered consumer ...
                ("CONSUMER.CREATE", f".*.$KV.{bucket}.>"),  # ... or one it names, filtered inside the bucket
                ("CONSUMER.INFO", ".*"),
            )
        ),
        "$JS.API.INFO",  # the account's JetStream info, which nats.js and the nats CLI ask first
        "ebbtide.status_reports-request",
    ]
    assert set(permissions.subscribe) == {
        "_ebbtide_inbox.observer.>",
        "ebbtide.status_reports.>",
        "$KV.outbox-express.>",
        "$KV.outbox-standard.>",
    }


def test_the_ingress_password_is_stored_hashed(tmp_path: Path) -> None:
    bundle = write_bundle(MANIFEST, tmp_path / "auth")
    password = bundle.ingress().password
    config = bundle.server_config.read_text()
    assert password not in config
    [ingress] = [u for u in json.loads(config.split("authorization ", 1)[1])["users"] if u.get("user") == "ingress"]
    assert ingress["password"].startswith(f"$2b${BCRYPT_COST:02d}$") and bcrypt.checkpw(
        password.encode(), ingress["password"].encode()
    )
    assert stat.S_IMODE((tmp_path / "auth" / INGRESS_ENV).stat().st_mode) == 0o600
    assert write_bundle(MANIFEST, tmp_path / "auth").ingress().password == password  # kept on regeneration
    assert bundle.server_config.read_text() == config  # the same hash: a Secret made from it keeps its name


def test_reading_commands_use_the_observer(tmp_path: Path) -> None:
    bundle = write_bundle(MANIFEST, tmp_path / "auth")
    access = ServerAccess("nats://127.0.0.1:4222", bundle.admin(), bundle)
    assert access.for_reading().nkey_seed_file == str(bundle.seed_file("observer"))
    assert access.for_reading().inbox_prefix == "_ebbtide_inbox.observer"
    external = ServerAccess("nats://127.0.0.1:4222", NatsAuth(nkey_seed_file="/secrets/observer.nk"))
    assert external.for_reading() == external.admin  # an external server: the configured credentials
