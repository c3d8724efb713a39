"""Scaling beyond one machine: `ebbtide scaler` (KEDA's external scaler) and `ebbtide plan` (the capacity model).

Each loads its package only when it runs: the scaler needs grpcio (the `scaler` extra), the plan nothing
but the standard library and the manifest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from ..broker.access import client_access
from ..errors import UsageError
from ..manifest import LoadedManifest

METRICS_HOST_ENV = "EBBTIDE_METRICS_HOST"  # as a function's host reads it (host.py): 0.0.0.0 in containers


def scaler_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    try:
        from ..kedascaler.service import ScalerSettings, TlsFiles, serve
    except ImportError as exc:
        raise UsageError(f"`ebbtide scaler` needs grpcio: pip install 'ebbtide[scaler]' ({exc})") from None
    import uvloop

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen {args.listen!r}: expected HOST:PORT, e.g. 0.0.0.0:9090")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        raise UsageError("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
    for option in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            raise UsageError(f"--{option.replace('_', '-')}: {path} is not a file")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    server = client_access(manifest, args.nats_url)
    settings = ScalerSettings(
        url=server.url,
        auth=server.for_scaler(),
        grpc_host=host,
        grpc_port=int(port),
        metrics_host=os.environ.get(METRICS_HOST_ENV) or manifest.spec.telemetry.metrics_host,
        metrics_port=args.metrics_port if args.metrics_port is not None else manifest.spec.telemetry.metrics_port,
        tls=tls,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(manifest, settings, stop)

    uvloop.run(main())
    return 0


def plan_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    from ..capacity.cli import run_plan

    return run_plan(args, manifest)
