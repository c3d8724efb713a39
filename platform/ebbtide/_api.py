"""The parts of the public API (`ebbtide.__all__`) that are not a name of another module."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from .broker import provisioning
from .manifest import LoadedManifest


async def provision(connection: NatsClient, manifest: LoadedManifest, functions: list[str] | None = None) -> None:
    """Create or update on the server what the manifest's functions need (`ebbtide provision`): streams,
    outbox KV buckets, the dead-letter stream and each function's durable consumer. Idempotent; needs a
    connection allowed to administer JetStream. `functions`: only what these need (default: all)."""
    await provisioning.provision(connection.jetstream(), manifest, functions)
