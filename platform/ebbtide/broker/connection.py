"""Connecting to NATS: which server (flag, environment, manifest, or embedded) and the client options."""

from __future__ import annotations

import os

import nats
from nats.aio.client import Client as NatsClient

from ..manifest import LoadedManifest

NATS_URL_ENV = "EBBTIDE_NATS_URL"


def configured_url(manifest: LoadedManifest, flag: str | None = None) -> str | None:
    """The NATS URL to use, or None for the embedded server. Precedence: flag, environment, manifest."""
    return flag or os.environ.get(NATS_URL_ENV) or manifest.spec.nats.url or None


async def connect(url: str, name: str) -> NatsClient:
    return await nats.connect(
        url,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
        pending_size=64 * 1024 * 1024,
        flush_timeout=10,
    )
