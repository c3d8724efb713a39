"""JetStream figures only the server knows, as metric families: each server's store against its limit, each
stream's bytes and messages against its limits, and the `max_age` of the stream each function is triggered
from (for the alert on the oldest pending message, deploy/prometheus/alerts.yml).

Read from nats-server's monitoring port (`/varz`, `/jsz`) by `ebbtide nats-exporter` (commands/exporter.py),
a process of its own that holds no NATS credentials and sends nothing on the bus: the least it can be given.
Function processes never load it. Pure: the JSON the servers answered in, families out.

In a cluster every node is read: each reports its own store, and a stream is taken from the node that
leads it (a follower's view can lag); while a stream has no leader, from the first node that has it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .metrics import Family

NANOSECONDS = 1e9

Json = Mapping[str, Any]


@dataclass(frozen=True)
class MonitorReading:
    """What one server's monitoring port answered; `varz`/`jsz` None when it did not (`error` says why)."""

    url: str
    varz: Json | None = None
    jsz: Json | None = None
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.varz is not None and self.jsz is not None


def _number(data: Json, key: str) -> float:
    value = data.get(key, 0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _streams(jsz: Json) -> list[Json]:
    found: list[Json] = []
    for account in jsz.get("account_details") or []:
        found += [stream for stream in account.get("stream_detail") or [] if isinstance(stream, Mapping)]
    return found


def leading_streams(readings: Sequence[MonitorReading]) -> dict[str, Json]:
    """Stream name -> its details as the node leading it reports them (else the first node that has it)."""
    chosen: dict[str, Json] = {}
    led: set[str] = set()
    for reading in readings:
        if not reading.answered:
            continue
        assert reading.varz is not None and reading.jsz is not None
        server = reading.varz.get("server_name", "")
        for stream in _streams(reading.jsz):
            name = stream.get("name")
            if not isinstance(name, str) or name in led:
                continue
            if server and (stream.get("cluster") or {}).get("leader") == server:
                chosen[name] = stream
                led.add(name)
            else:
                chosen.setdefault(name, stream)
    return chosen


def collect(readings: Sequence[MonitorReading], trigger_streams: Mapping[str, str]) -> list[Family]:
    """Every family, from one reading per monitored server. `trigger_streams`: function -> the stream that
    holds its trigger (from the manifest)."""
    monitor_up = Family(
        "ebbtide_nats_monitor_up", "gauge", "1 when the server's monitoring port answered the last reading, else 0."
    )
    storage = Family("ebbtide_jetstream_storage_bytes", "gauge", "JetStream file store in use on the server.")
    storage_limit = Family(
        "ebbtide_jetstream_storage_limit_bytes", "gauge", "The server's JetStream file store limit (max_file_store)."
    )
    reserved = Family(
        "ebbtide_jetstream_storage_reserved_bytes",
        "gauge",
        "File store reserved on the server by streams with max_bytes (counted against its limit).",
    )
    memory = Family("ebbtide_jetstream_memory_bytes", "gauge", "JetStream memory store in use on the server.")
    memory_limit = Family(
        "ebbtide_jetstream_memory_limit_bytes", "gauge", "The server's JetStream memory store limit (max_memory_store)."
    )
    stream_bytes = Family("ebbtide_stream_bytes", "gauge", "Bytes held by the stream (its leader's view).")
    stream_messages = Family("ebbtide_stream_messages", "gauge", "Messages held by the stream (its leader's view).")
    max_bytes = Family("ebbtide_stream_max_bytes", "gauge", "The stream's max_bytes (present only for a stream with that limit).")
    max_messages = Family(
        "ebbtide_stream_max_messages", "gauge", "The stream's max_msgs (present only for a stream with that limit)."
    )
    max_age = Family(
        "ebbtide_stream_max_age_seconds",
        "gauge",
        "The stream's max_age: older messages are removed, handled or not (present only for a stream with that limit).",
    )
    trigger_max_age = Family(
        "ebbtide_trigger_max_age_seconds",
        "gauge",
        "max_age of the stream holding the function's trigger: a message pending that long is removed unhandled "
        "(present only when that stream has an age limit).",
    )

    for reading in readings:
        monitor_up.add(1 if reading.answered else 0, monitor=reading.url)
        if not reading.answered:
            continue
        assert reading.varz is not None
        server = str(reading.varz.get("server_name") or reading.varz.get("server_id") or reading.url)
        jetstream = reading.varz.get("jetstream") or {}
        config, stats = jetstream.get("config") or {}, jetstream.get("stats") or {}
        if not config:
            continue  # JetStream is off on this server
        storage.add(_number(stats, "storage"), server=server)
        storage_limit.add(_number(config, "max_storage"), server=server)
        reserved.add(_number(stats, "reserved_storage"), server=server)
        memory.add(_number(stats, "memory"), server=server)
        memory_limit.add(_number(config, "max_memory"), server=server)

    streams = leading_streams(readings)
    for name, stream in sorted(streams.items()):
        state, config = stream.get("state") or {}, stream.get("config") or {}
        stream_bytes.add(_number(state, "bytes"), stream=name)
        stream_messages.add(_number(state, "messages"), stream=name)
        if _number(config, "max_bytes") > 0:
            max_bytes.add(_number(config, "max_bytes"), stream=name)
        if _number(config, "max_msgs") > 0:
            max_messages.add(_number(config, "max_msgs"), stream=name)
        if _number(config, "max_age") > 0:
            max_age.add(_number(config, "max_age") / NANOSECONDS, stream=name)
    for function, name in sorted(trigger_streams.items()):
        age_ns = _number((streams.get(name) or {}).get("config") or {}, "max_age")
        if age_ns > 0:
            trigger_max_age.add(age_ns / NANOSECONDS, function=function, stream=name)

    return [
        monitor_up,
        *(storage, storage_limit, reserved, memory, memory_limit),
        *(stream_bytes, stream_messages, max_bytes, max_messages, max_age, trigger_max_age),
    ]
