"""Connecting to NATS: which server (flag, environment, manifest, or embedded) and the client options."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from ..errors import NatsConnectionError
from ._nats_fast import FastNatsClient
from .credentials import NatsAuth

RETRY_WAIT_S = 0.25
CLOSE_TIMEOUT_S = 5.0
REFUSALS_FOR_GOOD = 2  # refused this many times in a row on reconnect: the credentials are gone (as nats.go)

log = logging.getLogger("ebbtide.nats")

# The same for every connection ebbtide makes: reconnect forever, with room to buffer while disconnected.
_CLIENT_OPTIONS: dict[str, Any] = {
    "allow_reconnect": True,
    "max_reconnect_attempts": -1,
    "reconnect_time_wait": RETRY_WAIT_S,  # nats-py annotates int, takes seconds as a float
    "connect_timeout": 5,
    "pending_size": 64 * 1024 * 1024,
    "flush_timeout": 10,
}


async def connect(
    url: str,
    name: str,
    give_up_after_s: float | None = None,
    on_lost: Callable[[], None] | None = None,
    auth: NatsAuth | None = None,
) -> NatsClient:
    """A client that reconnects forever once connected. `url` may list several servers, comma-separated.

    The first connection is retried too (a host may start before its server); `give_up_after_s` bounds
    that for commands a person waits on (publish, top), which then raise NatsConnectionError, as they do
    at once when the server refuses the credentials. Cancelling the task (a signal during start-up) stops
    the retries; the CancelledError then carries a note saying which server never answered, and why. A run
    of identical failures is logged once, not once per retry. `on_lost` is called when the connection
    closes for good, also when we close it: the caller tells the two apart (e.g. the server refused a
    protocol violation: the process should exit and be restarted instead of idling without a connection).
    `auth`: credentials and TLS (none by default).
    """
    return await _Connection(url, on_lost, auth).open(name, give_up_after_s)


class _Connection:
    """One connection being made and kept: what nats-py's callbacks report, remembered between them."""

    def __init__(self, url: str, on_lost: Callable[[], None] | None, auth: NatsAuth | None) -> None:
        self.url = url
        self.auth = auth
        self.nc = FastNatsClient()  # ebbtide's hot path, on this connection only (see _nats_fast)
        self._on_lost = on_lost
        self._refused = asyncio.Event()  # wrong credentials: retrying will not help, so the first connect fails at once
        self._failure = ""  # the latest error, logged once until it changes or a connection succeeds
        self._established = False  # the first connection succeeded: from then on, a refusal comes on a reconnect
        self._refusals_in_a_row = 0  # while reconnecting
        self._closing: asyncio.Future[None] | None = None  # a reference, so the closing task is not collected midway
        self._abandoned = False  # closed before it ever connected: nothing was lost
        self._lost_reported = False

    async def open(self, name: str, give_up_after_s: float | None) -> NatsClient:
        connecting = asyncio.ensure_future(
            self.nc.connect(
                [server.strip() for server in self.url.split(",") if server.strip()],  # "a,b,c": a cluster's seed list
                name=name,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                **_CLIENT_OPTIONS,
                **(self.auth.connect_options() if self.auth is not None else {}),
            )
        )
        refusal = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait([connecting, refusal], timeout=give_up_after_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError as stopped:
            await self._abandon(connecting)  # nats-py would go on retrying in the background
            stopped.add_note(f"while connecting to {self.url}: {self._failure or 'no answer yet'}")
            raise
        finally:
            refusal.cancel()
        if self._refused.is_set():
            await self._abandon(connecting)
            who = self.auth.describe() if self.auth is not None else "no credentials"
            raise NatsConnectionError(f"{self.url} refused the credentials ({who}): Authorization Violation")
        if not connecting.done():
            await self._abandon(connecting)
            raise NatsConnectionError(f"cannot connect to {self.url} within {give_up_after_s:.0f} s")
        try:
            connecting.result()
        except nats.errors.Error as exc:
            await self.nc.close()
            raise NatsConnectionError(f"cannot connect to {self.url}: {exc}") from None
        self._failure = ""
        self._established = True
        return self.nc

    async def _abandon(self, connecting: asyncio.Future[None]) -> None:
        self._abandoned = True
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await self.nc.close()

    # -- nats-py's callbacks -------------------------------------------------------------------------------

    async def _on_error(self, error: Exception) -> None:
        if "authorization violation" in str(error).lower():
            self._on_refused()
            return
        text = str(error) or type(error).__name__
        if text == self._failure:
            log.debug("nats: %s (again)", text)
            return
        self._failure = text
        if self.nc.is_connected:
            log.warning("nats: %s", text)
        else:
            log.warning("nats: cannot reach %s: %s; retrying every %.2f s until it answers", self.url, text, RETRY_WAIT_S)

    def _on_refused(self) -> None:
        if not self._established:
            self._refused.set()
            return
        # Credentials revoked while we were away (the server drops the connection without an error nats-py
        # would close on). As nats.go does: refused twice in a row is for good, so close, and `on_lost`
        # tells the process to exit rather than retry in silence forever.
        self._refusals_in_a_row += 1
        log.error("nats: %s refused the credentials on reconnect (%d in a row)", self.url, self._refusals_in_a_row)
        if self._refusals_in_a_row >= REFUSALS_FOR_GOOD and self._closing is None:
            self._closing = asyncio.ensure_future(self._close_for_good())

    async def _on_disconnected(self) -> None:
        if not (self.nc.is_closed or self.nc.is_draining):  # not when we close it ourselves
            log.warning("nats: disconnected from %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        self._failure = ""
        self._refusals_in_a_row = 0
        log.info("nats: reconnected")

    async def _on_closed(self) -> None:
        self._report_lost()

    async def _close_for_good(self) -> None:
        # nats-py's close can stop before its closed callback: it flushes what was buffered while
        # disconnected into the dead transport. The connection is closed either way; say so once.
        try:
            await asyncio.wait_for(self.nc.close(), timeout=CLOSE_TIMEOUT_S)
        except Exception as exc:
            log.warning("nats: closing after the refusals: %r", exc)
        self._report_lost()

    def _report_lost(self) -> None:
        if self._on_lost is not None and not self._abandoned and not self._lost_reported:
            self._lost_reported = True
            self._on_lost()
