"""Reading the platform's state from the server: stream counts and times (for the demo, tests and tools)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from nats.aio.client import Client as NatsClient

from .broker import jsapi
from .errors import JetStreamError


class StreamState(msgspec.Struct):
    messages: int = 0
    last_seq: int = 0  # of a KV bucket's stream: the writes it stored (nothing is deleted but by a rewrite)
    last_ts: datetime | None = None  # when the newest message was stored (server clock)


class _StreamInfo(jsapi.ApiResponse):
    state: StreamState | None = None


async def stream_state(nc: NatsClient, stream: str) -> StreamState:
    """The stream's message count and last write time; empty if the stream does not exist (yet).

    Any error reply counts as empty, as the callers poll it until a count is reached (a server that has
    just restarted answers "JetStream not ready" for a moment).
    """
    try:
        info = await jsapi.request(nc, f"STREAM.INFO.{stream}", None, _StreamInfo)
    except JetStreamError:
        return StreamState()
    return info.state or StreamState()
