"""The host: one NATS connection, one Wasm engine, and a pool per function of the manifest.

Used by `ebbtide up` (every function), `ebbtide run --function NAME` (one), the demo and the tests.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NatsClient

from .autoscale import PoolController
from .broker import ConfirmedPublisher, connect, provision
from .manifest import LoadedManifest
from .pool import FunctionPool
from .runtime import WasmEngine

log = logging.getLogger("ebbtide.host")


class Host:
    def __init__(self, manifest: LoadedManifest, nats_url: str, functions: list[str] | None = None) -> None:
        self.manifest = manifest
        self.nats_url = nats_url
        self.function_names = functions if functions is not None else list(manifest.spec.functions)
        for name in self.function_names:
            manifest.function(name)  # unknown names fail here, before connecting
        self.pools: dict[str, FunctionPool] = {}
        self.controllers: dict[str, PoolController] = {}
        self.nc: NatsClient | None = None
        self.connection_lost = asyncio.Event()  # set if NATS closed the connection for good while running
        self._stopping = False

    async def start(self) -> None:
        memory_limit = max(self.manifest.function(n).limits.memory_mib for n in self.function_names)
        engine = WasmEngine(memory_reservation=max(memory_limit, 16) * 1024 * 1024,
                            cache_dir=self.manifest.build_dir / "cache")
        self.nc = await connect(self.nats_url, name=f"ebbtide-host[{','.join(self.function_names)}]", on_lost=self._on_lost)
        js = self.nc.jetstream()
        await provision(js, self.manifest, self.function_names)
        publisher = ConfirmedPublisher(self.nc)
        await publisher.start()
        for name in self.function_names:
            # Loading and a first instance happen here, so a bad module fails the start, not a message.
            self.pools[name] = FunctionPool(name, self.manifest, engine, self.nc, js, publisher)
        for name, pool in self.pools.items():
            pool.probe()
            controller = PoolController(pool, self.nc, js)
            await controller.start()
            self.controllers[name] = controller
            scale = pool.function.scale
            log.info("function %s on %s: %d..%d instances, now %d", name, pool.function.trigger, scale.min, scale.max, pool.instances)

    def _on_lost(self) -> None:
        if not self._stopping:
            log.error("the NATS connection closed for good; this host cannot go on")
            self.connection_lost.set()

    async def stop(self) -> None:
        self._stopping = True
        for controller in self.controllers.values():
            await controller.stop()
        # Every pool finishes its batches at the same time, within its own grace period.
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()))
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception as exc:  # server already gone: nothing left to flush
                log.warning("could not drain the NATS connection (%s); closing it", exc)
                await self.nc.close()

    async def __aenter__(self) -> "Host":
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
