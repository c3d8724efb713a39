"""Reading orders back from the outbox KV buckets: `ebbtide outbox get|list`.

Only JetStream's read APIs are used (stream info, message get, and for `--wait` a core subscription to the
key's subject): nothing is created on the server, so a read-only user is enough. Which buckets: the one
named, else every bucket the manifest's functions write (their `kv` allowlists, in manifest order), so
`get ORDER_ID` finds an order whichever outbox its delivery routed it to.

A key whose last operation is a delete or purge is absent, as in `nats kv get`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError

from .broker import kv_stream_name, kv_subject
from .broker.jsapi import ERR_STREAM_NOT_FOUND
from .errors import OutboxError
from .manifest import LoadedManifest

API_TIMEOUT_S = 5.0
READ_WINDOW = 256  # message gets in flight at once while listing
KV_OPERATION = "KV-Operation"  # header of a delete or purge marker

# NATS KV keys: letters, digits and - / _ = . (no leading or trailing dot).
_VALID_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")


class OutboxEntry(msgspec.Struct, frozen=True):
    bucket: str
    key: str
    revision: int  # its sequence in the bucket's stream
    stored_at: str  # server time of the write, ISO 8601 UTC with ms
    value: bytes
    headers: dict[str, str] = {}  # of the write (e.g. `traceparent` when it was traced)


def is_valid_key(key: str) -> bool:
    return bool(_VALID_KEY.match(key))


def outbox_buckets(manifest: LoadedManifest, bucket: str | None = None) -> list[str]:
    """The bucket asked for, else every bucket the manifest's functions write (empty if none does)."""
    if bucket is not None:
        return [bucket]
    return list(dict.fromkeys(name for fn in manifest.spec.functions.values() for name in fn.kv))


async def get_entries(nc: NatsClient, buckets: list[str], key: str, wait_s: float = 0.0) -> list[OutboxEntry]:
    """The key's current value in each of `buckets` that has it; [] if none has it within `wait_s` seconds."""
    written = asyncio.Event()
    # Subscribed before the first read: a write that lands between the read and the wait still wakes us.
    subscriptions = [await nc.subscribe(kv_subject(bucket, key), cb=_set_on_message(written)) for bucket in buckets]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    try:
        while True:
            written.clear()
            found = [entry for bucket in buckets if (entry := await _read_key(nc, bucket, key)) is not None]
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            try:
                await asyncio.wait_for(written.wait(), remaining)
            except TimeoutError:
                pass  # one last read, then give up
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()


async def list_entries(nc: NatsClient, buckets: list[str], limit: int | None = None) -> list[OutboxEntry]:
    """Every current entry of `buckets`, bucket by bucket, keys in order (numbers by value); at most `limit`."""
    wanted: list[tuple[str, str]] = []
    for bucket in buckets:
        wanted += [(bucket, key) for key in sorted(await _keys(nc, bucket), key=_key_order)]
        if limit is not None and len(wanted) >= limit:
            wanted = wanted[:limit]
            break
    window = asyncio.Semaphore(READ_WINDOW)

    async def read(bucket: str, key: str) -> OutboxEntry | None:
        async with window:
            return await _read_key(nc, bucket, key)

    entries = await asyncio.gather(*(read(bucket, key) for bucket, key in wanted))
    return [entry for entry in entries if entry is not None]  # deleted between the key listing and the read


def format_value(entry: OutboxEntry) -> str:
    """The stored value as text: JSON as stored, anything else with undecodable bytes escaped."""
    return entry.value.decode("utf-8", "backslashreplace")


def format_table(entries: Iterable[OutboxEntry], width: int = 120) -> str:
    """One line per key: bucket, key, revision, stored at, size, and the value (cut to fit)."""
    entries = list(entries)
    if not entries:
        return "no entries"
    head = ("BUCKET", "KEY", "REV", "STORED AT", "SIZE")
    rows = [(e.bucket, e.key, str(e.revision), e.stored_at, str(len(e.value))) for e in entries]
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    right = {1, 2, 4}

    def line(cells: tuple[str, ...], value: str) -> str:
        prefix = "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + "  "
        room = max(width - len(prefix), 10)
        return (prefix + (value if len(value) <= room else value[: room - 1] + "…")).rstrip()

    return "\n".join([line(head, "VALUE")] + [line(row, _one_line(format_value(e))) for row, e in zip(rows, entries)])


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _set_on_message(event: asyncio.Event) -> Callable[[Msg], Awaitable[None]]:
    async def callback(_msg: Msg) -> None:
        event.set()

    return callback


def _key_order(key: str) -> tuple[int, int, str]:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


async def _read_key(nc: NatsClient, bucket: str, key: str) -> OutboxEntry | None:
    """The key's last write, None if it was never written or its last operation deleted it."""
    stream = kv_stream_name(bucket)
    try:
        msg = await nc.jetstream(timeout=API_TIMEOUT_S).get_msg(stream, subject=kv_subject(bucket, key))
    except NotFoundError as exc:
        if exc.err_code == ERR_STREAM_NOT_FOUND:
            raise _no_bucket(bucket) from None
        return None  # no message for that subject
    except NoRespondersError:
        raise OutboxError("JetStream is not available on this server (no responders)") from None
    except (TimeoutError, NatsTimeoutError):
        raise OutboxError(f"JetStream did not answer within {API_TIMEOUT_S} s") from None
    if msg.headers and msg.headers.get(KV_OPERATION) in ("DEL", "PURGE"):
        return None
    return OutboxEntry(bucket, key, msg.seq or 0, _iso(msg.time), msg.data or b"", dict(msg.headers or {}))


class _StreamInfoPage(msgspec.Struct):
    state: dict[str, Any] = {}
    total: int = 0
    offset: int = 0
    error: dict[str, Any] | None = None


async def _keys(nc: NatsClient, bucket: str) -> list[str]:
    """The bucket's keys (subjects with a stored message), from stream info: the server pages long lists."""
    stream, prefix = kv_stream_name(bucket), kv_subject(bucket, "")
    keys: list[str] = []
    while True:
        request = json.dumps({"subjects_filter": f"{prefix}>", "offset": len(keys)}).encode()
        try:
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=API_TIMEOUT_S)
        except NoRespondersError:
            raise OutboxError("JetStream is not available on this server (no responders)") from None
        except (TimeoutError, NatsTimeoutError):
            raise OutboxError(f"JetStream did not answer within {API_TIMEOUT_S} s") from None
        page = msgspec.json.decode(reply.data, type=_StreamInfoPage)
        if page.error is not None:
            if page.error.get("err_code") == ERR_STREAM_NOT_FOUND:
                raise _no_bucket(bucket)
            raise OutboxError(f"stream info of {stream}: {page.error.get('description', page.error)}")
        subjects = page.state.get("subjects") or {}
        keys += [subject.removeprefix(prefix) for subject in subjects]
        if not subjects or len(keys) >= page.total:
            return keys


def _no_bucket(bucket: str) -> OutboxError:
    return OutboxError(f"no KV bucket {bucket!r} on the server (buckets are created when the functions start: `ebbtide up`)")


def _iso(time: datetime | None) -> str:
    if time is None:
        return "-"
    return time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
