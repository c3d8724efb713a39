"""Connecting to NATS: which server (flag, environment, manifest, or embedded) and the client options."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NatsClient

from ._nats_fast import FastNatsClient
from .credentials import NatsAuth

RETRY_WAIT_S = 0.25
CLOSE_TIMEOUT_S = 5.0

log = logging.getLogger("ebbtide.nats")


async def connect(
    url: str,
    name: str,
    give_up_after_s: float | None = None,
    on_lost: Callable[[], None] | None = None,
    auth: NatsAuth | None = None,
) -> NatsClient:
    """A client that reconnects forever once connected. `url` may list several servers, comma-separated.

    The first connection is retried too (a host may start before its server); `give_up_after_s` bounds
    that for commands a person waits on (publish, top), which then raise ConnectionError. Cancelling the
    task (a signal during start-up) stops the retries; the CancelledError then carries a note saying which
    server never answered, and why. A run of identical failures is logged once, not once per retry.
    `on_lost` is called when the connection closes for good, also when we close it: the caller tells the
    two apart (e.g. the server refused a protocol violation: the process should exit and be restarted
    instead of idling without a connection). `auth`: credentials and TLS (none by default).
    """
    nc = FastNatsClient()  # ebbtide's hot path, on this connection only (see _nats_fast)
    refused = asyncio.Event()  # wrong credentials: retrying will not help, so the first connect fails at once
    failure = ""  # the latest error, logged once until it changes or a connection succeeds
    established = False  # the first connection succeeded: from then on, a refusal comes on a reconnect
    refusals_in_a_row = 0  # while reconnecting
    closing: list[asyncio.Future[None]] = []  # a reference, so the closing task is not collected midway
    lost_reported = False

    async def on_error(error: Exception) -> None:
        nonlocal failure, refusals_in_a_row
        if "authorization violation" in str(error).lower():
            if established:
                # Credentials revoked while we were away (the server drops the connection without an error
                # nats-py would close on). As nats.go does: refused twice in a row is for good, so close,
                # and `on_lost` tells the process to exit rather than retry in silence forever.
                refusals_in_a_row += 1
                log.error("nats: %s refused the credentials on reconnect (%d in a row)", url, refusals_in_a_row)
                if refusals_in_a_row >= 2:
                    closing.append(asyncio.ensure_future(close_for_good()))
                return
            refused.set()
            return
        text = str(error) or type(error).__name__
        if text == failure:
            log.debug("nats: %s (again)", text)
            return
        failure = text
        if nc.is_connected:
            log.warning("nats: %s", text)
        else:
            log.warning("nats: cannot reach %s: %s; retrying every %.2f s until it answers", url, text, RETRY_WAIT_S)

    async def on_disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):  # not when we close it ourselves
            log.warning("nats: disconnected from %s; reconnecting", url)

    async def on_reconnected() -> None:
        nonlocal failure, refusals_in_a_row
        failure = ""
        refusals_in_a_row = 0
        log.info("nats: reconnected")

    abandoned = False  # closed before it ever connected: nothing was lost

    def report_lost() -> None:
        nonlocal lost_reported
        if on_lost is not None and not abandoned and not lost_reported:
            lost_reported = True
            on_lost()

    async def on_closed() -> None:
        report_lost()

    async def close_for_good() -> None:
        # nats-py's close can stop before its closed callback: it flushes what was buffered while
        # disconnected into the dead transport. The connection is closed either way; say so once.
        try:
            await asyncio.wait_for(nc.close(), timeout=CLOSE_TIMEOUT_S)
        except Exception as exc:
            log.warning("nats: closing after the refusals: %r", exc)
        report_lost()

    connecting = nc.connect(
        [server.strip() for server in url.split(",") if server.strip()],  # "a,b,c": a cluster's seed list
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RETRY_WAIT_S,  # type: ignore[arg-type]  # nats-py annotates int, takes seconds as float
        connect_timeout=5,
        pending_size=64 * 1024 * 1024,
        flush_timeout=10,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        closed_cb=on_closed,
        **(auth.connect_options() if auth is not None else {}),
    )
    connected = asyncio.ensure_future(connecting)
    refusal = asyncio.ensure_future(refused.wait())

    async def abandon() -> None:
        nonlocal abandoned
        abandoned = True
        connected.cancel()
        await asyncio.gather(connected, return_exceptions=True)
        await nc.close()

    try:
        await asyncio.wait([connected, refusal], timeout=give_up_after_s, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError as stopped:
        await abandon()  # nats-py would go on retrying in the background
        stopped.add_note(f"while connecting to {url}: {failure or 'no answer yet'}")
        raise
    finally:
        refusal.cancel()
    if refused.is_set() or not connected.done():
        await abandon()
        if refused.is_set():
            who = auth.describe() if auth is not None else "no credentials"
            raise ConnectionError(f"{url} refused the credentials ({who}): Authorization Violation")
        raise ConnectionError(f"cannot connect to {url} within {give_up_after_s:.0f} s")
    try:
        connected.result()
    except nats.errors.Error as exc:
        await nc.close()
        raise ConnectionError(f"cannot connect to {url}: {exc}") from None
    failure = ""
    established = True
    return nc
