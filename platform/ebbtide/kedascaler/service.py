"""`ebbtide scaler`: KEDA's external scaler interface over gRPC, /metrics over HTTP, one FunctionWatch per
function of the manifest on one NATS connection (the `scaler` user: consumer info and the bell, nothing else).

The four RPCs of externalscaler.proto, each for the function named in the trigger's metadata (`function`):
IsActive and GetMetrics read the lag at once (KEDA asks every pollingInterval, the HPA every 15 s);
StreamIsActive answers the current activity, then every change as the watch sees it (the bell pushes an
activation before any lag is read); GetMetricSpec gives the metric and its target (targets.py). gRPC
itself comes from grpcio with generic handlers and the codec of wire.py (no generated code).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from nats.aio.client import Client as NatsClient

from ..broker import connect
from ..broker.credentials import NatsAuth
from ..manifest import LoadedManifest
from ..telemetry.http import TelemetryServer
from ..telemetry.metrics import Family, render_prometheus
from .targets import FUNCTION_KEY, FunctionTarget, function_targets, is_active
from .watch import FunctionWatch
from .wire import (
    GetMetricSpecResponse,
    GetMetricsRequest,
    GetMetricsResponse,
    IsActiveResponse,
    MetricSpec,
    MetricValue,
    ScaledObjectRef,
)

log = logging.getLogger("ebbtide.scaler")

SERVICE = "externalscaler.ExternalScaler"
DEFAULT_GRPC_PORT = 9090


@dataclass(frozen=True)
class TlsFiles:
    """The gRPC server's certificate and key; with `client_ca`, clients (KEDA) must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca, require_client_auth=ca is not None
        )


class ExternalScaler:
    """The RPCs, answered from the watches."""

    def __init__(self, watches: dict[str, FunctionWatch]) -> None:
        self.watches = watches

    async def _watch(self, ref: ScaledObjectRef, context: grpc.aio.ServicerContext) -> FunctionWatch:
        function = ref.scaler_metadata.get(FUNCTION_KEY, "")
        watch = self.watches.get(function)
        if watch is None:
            known = ", ".join(sorted(self.watches))
            what = f"unknown function {function!r}" if function else f"no `{FUNCTION_KEY}` in the trigger's metadata"
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"ScaledObject {ref.namespace}/{ref.name}: {what} (known: {known})"
            )
            raise AssertionError("context.abort raises")  # (for the type checker)
        return watch

    async def _lag(self, watch: FunctionWatch, context: grpc.aio.ServicerContext) -> int:
        try:
            return await watch.read_lag()
        except Exception as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{watch.target.function}: lag not readable: {exc}")
            raise AssertionError("context.abort raises") from None  # (for the type checker)

    async def is_active(self, ref: ScaledObjectRef, context: grpc.aio.ServicerContext) -> IsActiveResponse:
        watch = await self._watch(ref, context)
        return IsActiveResponse(is_active(await self._lag(watch, context)))

    async def stream_is_active(self, ref: ScaledObjectRef, context: grpc.aio.ServicerContext) -> AsyncIterator[IsActiveResponse]:
        watch = await self._watch(ref, context)
        queue = watch.listen()
        try:
            while True:
                yield IsActiveResponse(await queue.get())
        finally:
            watch.unlisten(queue)

    async def get_metric_spec(self, ref: ScaledObjectRef, context: grpc.aio.ServicerContext) -> GetMetricSpecResponse:
        target = (await self._watch(ref, context)).target
        size = target.target_per_replica
        return GetMetricSpecResponse([MetricSpec(target.metric_name, size, float(size))])

    async def get_metrics(self, request: GetMetricsRequest, context: grpc.aio.ServicerContext) -> GetMetricsResponse:
        watch = await self._watch(request.scaled_object_ref, context)
        name = watch.target.metric_name
        if request.metric_name not in ("", name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"unknown metric {request.metric_name!r} (this trigger's: {name})"
            )
        lag = await self._lag(watch, context)
        return GetMetricsResponse([MetricValue(name, lag, float(lag))])

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(
            method: Callable[[ScaledObjectRef, grpc.aio.ServicerContext], Awaitable[object]],
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(method, ScaledObjectRef.decode, _encode)

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "IsActive": unary(self.is_active),
                "StreamIsActive": grpc.unary_stream_rpc_method_handler(self.stream_is_active, ScaledObjectRef.decode, _encode),
                "GetMetricSpec": unary(self.get_metric_spec),
                "GetMetrics": grpc.unary_unary_rpc_method_handler(self.get_metrics, GetMetricsRequest.decode, _encode),
            },
        )


def _encode(message: IsActiveResponse | GetMetricSpecResponse | GetMetricsResponse) -> bytes:
    return message.encode()


def render(watches: dict[str, FunctionWatch], nc: NatsClient | None) -> str:
    """/metrics: `ebbtide_scaler_lag{function}` (what alerts read: backlog with no ready replica) and the rest."""
    lag = Family("ebbtide_scaler_lag", "gauge", "consumer lag (num_pending + num_ack_pending) as the scaler last read it")
    active = Family("ebbtide_scaler_active", "gauge", "1 while the function has work (what IsActive answers)")
    readable = Family("ebbtide_scaler_lag_readable", "gauge", "1 when the last lag read succeeded")
    reads = Family("ebbtide_scaler_lag_reads_total", "counter", "lag reads (CONSUMER.INFO of every consumer of the function)")
    pushed = Family(
        "ebbtide_scaler_activations_total", "counter", "activations pushed to StreamIsActive, by cause: bell (a publish) or poll"
    )
    for function, watch in watches.items():
        lag.add(watch.lag, function=function)
        active.add(1 if watch.active else 0, function=function)
        readable.add(1 if watch.readable else 0, function=function)
        reads.add(watch.lag_reads, function=function)
        for cause in ("bell", "poll"):
            pushed.add(watch.activations[cause], function=function, cause=cause)
    connected = Family("ebbtide_nats_connected", "gauge", "1 while connected to NATS")
    connected.add(1 if nc is not None and nc.is_connected else 0)
    return render_prometheus([lag, active, readable, reads, pushed, connected])


def readiness(watches: dict[str, FunctionWatch], nc: NatsClient | None) -> tuple[bool, str]:
    if nc is None or not nc.is_connected:
        return False, "not connected to NATS"
    unreadable = [f"{f}: {w.last_error}" for f, w in watches.items() if not w.readable]
    return (not unreadable, "lag not readable: " + "; ".join(unreadable) if unreadable else "ok")


@dataclass(frozen=True)
class ScalerSettings:
    url: str
    auth: NatsAuth
    grpc_host: str = "127.0.0.1"
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no /metrics
    tls: TlsFiles | None = None


class ScalerServer:
    """Connects, starts a watch per function, serves gRPC (and /metrics, /healthz, /readyz) until stopped."""

    def __init__(self, manifest: LoadedManifest, settings: ScalerSettings) -> None:
        self.settings = settings
        self.targets: dict[str, FunctionTarget] = function_targets(manifest)
        self.watches: dict[str, FunctionWatch] = {}
        self.nc: NatsClient | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: TelemetryServer | None = None

    async def start(self) -> ScalerServer:
        settings = self.settings
        self.nc = await connect(settings.url, "ebbtide-scaler", auth=settings.auth)
        self.watches = {name: FunctionWatch(target, self.nc) for name, target in self.targets.items()}
        for watch in self.watches.values():
            watch.start()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((ExternalScaler(self.watches).handler(),))
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        if settings.tls is not None:
            self.grpc_port = server.add_secure_port(address, settings.tls.credentials())
        else:
            self.grpc_port = server.add_insecure_port(address)
        await server.start()
        self._grpc = server
        if settings.metrics_port:  # last: /readyz says ready only once gRPC answers
            self._http = await TelemetryServer(
                lambda: render(self.watches, self.nc),
                lambda: readiness(self.watches, self.nc),
                host=settings.metrics_host,
                port=settings.metrics_port,
            ).start()
            self.metrics_port = self._http.port
        log.info(
            "scaler: KEDA external scaler on %s:%d (%s) for %s",
            settings.grpc_host,
            self.grpc_port,
            "TLS" if settings.tls else "plaintext",
            ", ".join(self.targets),
        )
        return self

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)  # open StreamIsActive calls end; KEDA reconnects to the next pod
            self._grpc = None
        for watch in self.watches.values():
            await watch.stop()
        if self.nc is not None:
            await self.nc.drain()
            self.nc = None
        if self._http is not None:
            await self._http.stop()
            self._http = None


async def serve(manifest: LoadedManifest, settings: ScalerSettings, stop: asyncio.Event) -> None:
    server = await ScalerServer(manifest, settings).start()
    try:
        await stop.wait()
    finally:
        await server.stop()
