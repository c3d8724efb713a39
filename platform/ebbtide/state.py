"""Reading the platform's state from the server: stream counts and times (for the demo, tests and tools)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from nats.aio.client import Client as NatsClient


class StreamState(msgspec.Struct):
    messages: int = 0
    last_ts: datetime | None = None  # when the newest message was stored (server clock)


class _StreamInfo(msgspec.Struct):
    state: StreamState | None = None


_decode_info = msgspec.json.Decoder(_StreamInfo).decode


async def stream_state(nc: NatsClient, stream: str) -> StreamState:
    """The stream's message count and last write time; empty if the stream does not exist yet."""
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    info = _decode_info(reply.data)
    return info.state or StreamState()
