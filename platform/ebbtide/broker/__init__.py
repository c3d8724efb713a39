"""Broker: the NATS connection, the embedded server, confirmed publishes and provisioning."""

from .connection import NATS_URL_ENV, configured_url, connect
from .embedded import EmbeddedNats, EmbeddedServerError, free_port
from .provision import consumer_config, kv_stream_name, kv_subject, missing_provisioning, provision, provision_server
from .publisher import ConfirmedPublisher, PubAck, PublishError, publish_all

__all__ = [
    "NATS_URL_ENV", "ConfirmedPublisher", "EmbeddedNats", "EmbeddedServerError", "PubAck",
    "PublishError", "configured_url", "connect", "consumer_config", "free_port", "kv_stream_name", "kv_subject", "missing_provisioning",
    "provision", "provision_server", "publish_all",
]
