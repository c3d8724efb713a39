"""The host: one NATS connection, one Wasm engine, and a pool per function of the manifest.

Used by `ebbtide up` (every function), `ebbtide run --function NAME` (one), the demo and the tests, and by an
application that runs functions in its own event loop (`ebbtide.Host`, on a connection it may pass in).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from .broker import ConfirmedPublisher, connect, missing_provisioning
from .broker.credentials import NatsAuth, client_auth
from .build import build_modules
from .controller import PoolController
from .errors import BuildError, GuestInitError, ManifestError, ModuleLoadError, UsageError
from .manifest import LoadedManifest
from .pool import FunctionPool
from .precompiled import function_engine
from .rollout.follow import RolloutFollower
from .runtime import WasmEngine
from .telemetry import HostSnapshot, PoolSnapshot, TelemetryServer, collect, gc_pauses, render_metrics, tracing

if TYPE_CHECKING:  # tracing and OTLP are loaded only when configured
    from opentelemetry.sdk.trace import TracerProvider

    from .telemetry.otlp import OtlpMetricsPusher

log = logging.getLogger("ebbtide.host")

# Overrides [telemetry] metrics_host: containers listen on 0.0.0.0 with the same manifest.
METRICS_HOST_ENV = "EBBTIDE_METRICS_HOST"
PROVISIONING_QUIET_S = 3.0  # missing provisioning is said at INFO this long, then as a warning
PROVISIONING_POLL_S = 0.5  # while a function's consumer does not exist yet


class Host:
    """Runs the functions of a manifest in the running event loop: `async with Host(...)`, or `start()` and
    `stop()`. Each function's durable consumer must exist (`ebbtide.provision`); until it does, the host
    waits for it."""

    def __init__(
        self,
        manifest: LoadedManifest,
        nats_url: str | None = None,
        functions: list[str] | None = None,
        metrics_port: int | None = None,
        tracer_provider: TracerProvider | None = None,
        auth: NatsAuth | None = None,
        *,
        connection: NatsClient | None = None,
    ) -> None:
        """Either `nats_url` (the host connects, with `auth`, and closes that connection when it stops) or
        `connection`: a connection of the application's, left open at stop (what the host subscribed on it
        is removed). `ebbtide.connect` makes one with ebbtide's fast path; any nats-py client works.

        `functions`: which of the manifest's (default: all). `metrics_port`: /metrics, /healthz and /readyz
        (0: none; default: the manifest's [telemetry]). `tracer_provider`: where spans go (tests pass an
        in-memory one); default: from [telemetry]. `auth`: NATS credentials; default: EBBTIDE_NATS_* or the
        manifest's [nats]."""
        if (nats_url is None) == (connection is None):
            raise UsageError("a Host needs either a NATS URL to connect to or a connection, not both")
        self.manifest = manifest
        self.nats_url = nats_url
        self._own_connection = connection is None
        self._publisher: ConfirmedPublisher | None = None
        self.auth = auth if auth is not None else client_auth(manifest)
        self.function_names = functions if functions is not None else list(manifest.spec.functions)
        for name in self.function_names:
            manifest.function(name)  # unknown names fail here, before connecting
        self.pools: dict[str, FunctionPool] = {}
        self.controllers: dict[str, PoolController] = {}
        self.rollouts: RolloutFollower | None = None
        self.nc: NatsClient | None = connection
        self.connection_lost = asyncio.Event()  # set if NATS closed the connection for good while running
        self.metrics_port = manifest.spec.telemetry.metrics_port if metrics_port is None else metrics_port
        self.telemetry: TelemetryServer | None = None
        telemetry = manifest.spec.telemetry
        service = f"ebbtide-{'-'.join(self.function_names)}"
        otlp_endpoint = tracing.otlp_endpoint(telemetry.otlp_endpoint)
        self._owns_tracer_provider = tracer_provider is None
        self.tracer_provider = tracer_provider or tracing.tracer_provider(telemetry.trace_sample_ratio, otlp_endpoint, service)
        self.metrics_pusher: OtlpMetricsPusher | None = None
        if otlp_endpoint:
            from .telemetry.otlp import OtlpMetricsPusher

            self.metrics_pusher = OtlpMetricsPusher.to_endpoint(lambda: collect(self.snapshot()), otlp_endpoint, service)
        self.stopping = False
        self.engine: WasmEngine | None = None
        self._reloading = asyncio.Lock()
        self.waiting_for = ""  # why the host cannot start its functions yet (nothing provisioned), for /readyz

    async def start(self) -> None:
        """Connect (unless given a connection), wait for provisioning, load each function's module and start
        its pool and controller. A module that cannot load or start fails here, not at the first message."""
        if self.metrics_port:  # first, so /healthz answers during start-up and /readyz says why not yet
            gc_pauses.timed()  # from now on, not from the first scrape
            self.telemetry = await TelemetryServer(
                lambda: render_metrics(self.snapshot()),
                self.readiness,
                host=os.environ.get(METRICS_HOST_ENV) or self.manifest.spec.telemetry.metrics_host,
                port=self.metrics_port,
            ).start()
        engine = self.engine = function_engine(self.manifest, self.function_names)
        if self.nats_url is not None:
            self.nc = await connect(
                self.nats_url, name=f"ebbtide-host[{','.join(self.function_names)}]", on_lost=self._on_lost, auth=self.auth
            )
        assert self.nc is not None
        js = self.nc.jetstream()
        await self._wait_until_provisioned(js)
        publisher = self._publisher = ConfirmedPublisher(self.nc, self.manifest.batched_stream_of())
        await publisher.start()
        for name in self.function_names:
            # Loading and a first instance happen here, so a bad module fails the start, not a message.
            self.pools[name] = FunctionPool(
                name, self.manifest, engine, self.nc, publisher, tracing.tracer_of(self.tracer_provider)
            )
        for pool in self.pools.values():
            pool.probe()
        # Before any message is taken: a promoted module, or a candidate, recorded for these functions.
        self.rollouts = RolloutFollower(self.nc, self.manifest, engine, self.pools)
        await self.rollouts.start()
        for name, pool in self.pools.items():
            controller = PoolController(pool, self.nc, js)
            await controller.start()
            self.controllers[name] = controller
            scale = pool.function.scale
            log.info(
                "function %s on %s: %d..%d instances, now %d", name, pool.function.trigger, scale.min, scale.max, pool.instances
            )

        if self.metrics_pusher is not None:
            self.metrics_pusher.start()

    async def _wait_until_provisioned(self, js: JetStreamContext) -> None:
        """Hosts never create streams or consumers (their users may not): wait for `ebbtide provision`,
        saying once what is missing, and again only if that changes."""
        started = time.monotonic()
        for name in self.function_names:
            said, warned = "", False
            while reason := await missing_provisioning(js, self.manifest, name):
                self.waiting_for = f"function {name}: {reason}"
                # Under `up` provisioning runs beside the functions' start: a moment's wait is no news.
                late = time.monotonic() - started > PROVISIONING_QUIET_S
                if reason != said or (late and not warned):
                    log.log(logging.WARNING if late else logging.INFO, "%s; waiting for it", self.waiting_for)
                    said, warned = reason, late
                await asyncio.sleep(PROVISIONING_POLL_S)
            if said:
                log.info("function %s: provisioned, starting", name)
        self.waiting_for = ""

    async def reload(self) -> None:
        """Hot reload (SIGHUP, `up --watch`): rebuild each function's module if its sources changed and swap
        a changed module into the running pool. Messages in flight finish on the old module; a module that
        does not build, load or start is refused, reported, and the old one keeps running."""
        async with self._reloading:
            for name, pool in self.pools.items():
                fn = pool.function
                if self.rollouts is not None and (promoted := self.rollouts.pinned(name)):
                    log.warning(
                        "function %s runs the promoted module %s: a rebuilt module is not swapped in "
                        "(`ebbtide shadow abort %s` returns it to the manifest's module)",
                        name,
                        promoted[:12],
                        name,
                    )
                    continue
                try:
                    await asyncio.to_thread(build_modules, self.manifest, [fn.module])
                    module = await asyncio.to_thread(pool.load_module)
                    swapped = pool.swap_module(module)
                except (BuildError, ManifestError, ModuleLoadError, GuestInitError) as exc:
                    pool.stats.reloads["refused"] = pool.stats.reloads.get("refused", 0) + 1
                    log.error("function %s: new module refused, module %s keeps running: %s", name, pool.module.sha256[:12], exc)
                    continue
                if swapped:
                    pool.stats.reloads["ok"] = pool.stats.reloads.get("ok", 0) + 1
                    log.info("function %s: now running module %s", name, module.sha256[:12])

    def snapshot(self) -> HostSnapshot:
        """What telemetry renders: every started pool's counters and gauges, at this moment."""
        pools = []
        for name, pool in list(self.pools.items()):
            stats = pool.stats
            controller = self.controllers.get(name)
            pools.append(
                PoolSnapshot(
                    function=name,
                    processed=stats.processed,
                    dead_lettered=stats.dead_lettered,
                    refused=stats.refused,
                    retried=stats.retried,
                    dead_letters=dict(stats.dead_letters),
                    guest_faults=dict(stats.guest_faults),
                    instances_started=stats.instances_started,
                    instances_stopped=stats.instances_stopped,
                    reloads=dict(stats.reloads),
                    live_instances=pool.live_instances,
                    in_flight=pool.in_flight,
                    backlog=controller.lag if controller is not None else None,
                    oldest_pending_s=controller.oldest_pending_s if controller is not None else None,
                    handle=stats.handle,
                    end_to_end=stats.end_to_end,
                    shadow=dict(pool.rollout_stats.shadow),
                    canary=dict(pool.rollout_stats.canary),
                    candidate_s=pool.rollout_stats.candidate_s,
                    canary_rollbacks=pool.rollout_stats.rollbacks,
                )
            )
        return HostSnapshot(
            pools,
            nats_connected=self.nc is not None and self.nc.is_connected,
            ready=self.readiness()[0],
            asyncio_tasks=_asyncio_tasks(),
        )

    def readiness(self) -> tuple[bool, str]:
        """/readyz: connected to NATS, and every function's pool created and its controller running.

        (The host waits for provisioning to create each function's consumer before it creates the pool, so
        a started controller means the consumer is there; a pool scaled to zero holds no subscription and
        is still ready.)
        """
        if self.stopping:
            return False, "stopping"
        nc = self.nc
        if nc is None:
            return False, "not connected to NATS yet"
        if not nc.is_connected:
            return False, "NATS connection down" + (" (closed)" if nc.is_closed else "; reconnecting")
        if self.waiting_for:
            return False, self.waiting_for
        for name in self.function_names:
            if name not in self.pools:
                return False, f"function {name}: pool not started"
            controller = self.controllers.get(name)
            if controller is None or not controller.running:
                return False, f"function {name}: controller not running"
        return True, "ok"

    def _on_lost(self) -> None:
        if not self.stopping:
            log.error("the NATS connection closed for good; this host cannot go on")
            self.connection_lost.set()

    async def stop(self) -> None:
        """Stop taking messages, let every pool finish its batches within its grace period, then close the
        connection the host made (a given one stays open)."""
        self.stopping = True
        try:
            for controller in self.controllers.values():
                await controller.stop()
            if self.rollouts is not None:
                await self.rollouts.stop()
            # Every pool finishes its batches at the same time, within its own grace period.
            await asyncio.gather(*(pool.stop() for pool in self.pools.values()))
            if not self._own_connection:  # the application's: what the host added to it goes, it stays open
                if self._publisher is not None and self.nc is not None and not self.nc.is_closed:
                    await self._publisher.stop()
            elif self.nc is not None and not self.nc.is_closed:
                try:
                    await self.nc.drain()
                except Exception as exc:  # server already gone: nothing left to flush
                    log.warning("could not drain the NATS connection (%s); closing it", exc)
                    await self.nc.close()
        finally:
            if self.telemetry is not None:  # last: /readyz says "stopping" during the drain
                await self.telemetry.stop()
            if self.metrics_pusher is not None:
                await self.metrics_pusher.stop()  # one last push: the final counts of this process
            if self.tracer_provider is not None and self._owns_tracer_provider:
                self.tracer_provider.shutdown()  # exports what is still buffered

    async def __aenter__(self) -> Host:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _asyncio_tasks() -> int | None:
    """Tasks alive on the running event loop (None when called off it)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None
