"""`ebbtide console` (a live web page of the running platform) and the console process of `up --console`.

The web framework is imported only here, when the console runs: `up` starts the console as a process of
its own (`ebbtide console`, dying with `up`), so neither `up`'s supervisor nor a function process loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..broker.access import client_access
from ..errors import UsageError
from ..manifest import LoadedManifest

log = logging.getLogger("ebbtide")

STOP_WAIT_S = 10.0


def console_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    try:
        from ..console.server import TOKEN_ENV, is_loopback, listening_socket, serve
        from ..console.service import Console
    except ModuleNotFoundError as exc:  # the optional extra is missing
        raise UsageError(f"the console needs {exc.name}: pip install 'ebbtide[console]'") from None
    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None:
        raise UsageError(
            f"--host {args.host} is reachable from other machines: set ${TOKEN_ENV} to a secret (the page then asks for it)"
        )
    if args.trace_url is not None and "{trace_id}" not in args.trace_url:
        raise UsageError("--trace-url must contain {trace_id}, e.g. http://localhost:16686/trace/{trace_id}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number")
    access = client_access(manifest, args.nats_url)
    console = Console(
        manifest, access, read_only_why="started with --read-only" if args.read_only else "", trace_url=args.trace_url
    )
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    mode = "read-only" if args.read_only else "redrive, purge, promote and abort offered (admin credentials)"
    log.info("console at http://%s:%d/%s (NATS %s; %s)", shown, port, f"?token=<${TOKEN_ENV}>" if token else "", access.url, mode)
    with sock:
        asyncio.run(serve(console, sock, token))
    return 0


@contextmanager
def console_beside(manifest: LoadedManifest, nats_url: str | None, port: int) -> Iterator[None]:
    """`up --console`: `ebbtide console` in a process of its own while the functions run; it dies with `up`.

    `nats_url`: the server to read, None for the embedded server with generated users (the console finds
    their credentials in its data folder, as `ebbtide dlq` does)."""
    from ..broker.ports import describe_listener, port_taken
    from ..children import die_with_parent

    # Checked here: the console's own process would say it and exit, and `up` would go on without a console.
    if port and port_taken("127.0.0.1", port):
        who = describe_listener(port)
        raise UsageError(
            f"the console's port 127.0.0.1:{port} is in use{f' by {who}' if who else ''}: choose another (--console PORT)"
        )
    command = [sys.executable, "-m", "ebbtide", "--manifest", str(manifest.path), "console", "--port", str(port)]
    if nats_url is not None:
        command += ["--nats-url", nats_url]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
    try:
        yield
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("the console did not stop within %.0f s; killing it", STOP_WAIT_S)
            process.kill()
            process.wait()
