"""Broker: everything that speaks NATS and JetStream.

    access       which server and credentials (embedded or configured); no NATS client needed
    auth         credentials and TLS of a connection (NatsAuth)
    authorization  the generated users and their permissions (nats-config)
    connection   connecting, reconnecting, losing the connection for good
    embedded     the embedded nats-server process
    names        KV stream and subject names
    provisioning streams, KV buckets, dead letters, durable consumers (admin)
    jsapi        the raw JetStream API, one error type
    headers      every header name
    delivery     a delivered message: its metadata, ack / nak / in progress, keep-alive
    pull         fetching batches from a durable pull consumer
    publisher    confirmed publishes

The names below are imported from their module on first use, so that a process that only supervises
(or only reads the manifest) never loads the NATS client.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "NATS_URL_ENV": "access",
    "configured_url": "access",
    "connect": "connection",
    "EmbeddedNats": "embedded",
    "EmbeddedServerError": "embedded",
    "free_port": "embedded",
    "kv_stream_name": "names",
    "kv_subject": "names",
    "consumer_config": "provisioning",
    "missing_provisioning": "provisioning",
    "provision": "provisioning",
    "provision_server": "provisioning",
    "ConfirmedPublisher": "publisher",
    "PubAck": "publisher",
    "PublishError": "publisher",
    "PublishTally": "publisher",
    "publish_all": "publisher",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{home}", __name__), name)
