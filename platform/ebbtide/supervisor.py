"""One process per function, supervised: `ebbtide up --processes per-function`.

Python runs one core per process; the distributor and the receivers are independent consumers, so
running each in its own process (`ebbtide run --function NAME`) lets them use every core. A child that
exits unexpectedly is restarted after a backoff (doubling up to RESTART_MAX_S, reset after a healthy
run); its unacked messages are redelivered by JetStream to whoever runs the function next.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .children import die_with_parent

log = logging.getLogger("ebbtide.supervisor")

RESTART_MIN_S = 0.5
RESTART_MAX_S = 10.0
HEALTHY_AFTER_S = 30.0  # a child that ran this long starts again from the minimum backoff


@dataclass
class Child:
    function: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Supervisor:
    def __init__(
        self,
        manifest_path: Path,
        functions: list[str],
        nats_url: str,
        verbose: bool = False,
        metrics_port: int = 0,
        child_env: Callable[[str], dict[str, str]] | None = None,
        restart_min_s: float = RESTART_MIN_S,
        restart_max_s: float = RESTART_MAX_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        """`child_env(function)`: variables added to that child's environment (its NATS credentials).
        The restart policy's times are parameters so that tests can run it in a second, not minutes."""
        self.restart_min_s, self.restart_max_s, self.healthy_after_s = restart_min_s, restart_max_s, healthy_after_s
        self.manifest_path = manifest_path
        self.child_env = child_env
        # One port each, in order, so every child's /metrics can be scraped (0: off).
        self.metrics_ports = {name: metrics_port + i if metrics_port else 0 for i, name in enumerate(functions)}
        self.nats_url = nats_url
        self.verbose = verbose
        self.children = {name: Child(name) for name in functions}
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    def _command(self, function: str) -> list[str]:
        # Children log like their parent: they inherit $EBBTIDE_LOG_FORMAT, which cli.main sets.
        command = [sys.executable, "-m", "ebbtide", "--manifest", str(self.manifest_path)]
        if self.verbose:
            command.append("--verbose")
        return command + [
            "run",
            "--function",
            function,
            "--nats-url",
            self.nats_url,
            "--metrics-port",
            str(self.metrics_ports[function]),
        ]

    async def start(self) -> None:
        for child in self.children.values():
            await self._spawn(child)
            self._watchers.append(asyncio.create_task(self._watch(child), name=f"supervise-{child.function}"))

    async def _spawn(self, child: Child) -> None:
        env = {**os.environ, **self.child_env(child.function)} if self.child_env is not None else None
        # A session of its own, as the embedded server's: Ctrl-C in a terminal signals the whole foreground
        # process group, and a child that stopped on it would be restarted here before its parent (`up`,
        # `demo`) had told the supervisor to stop. The parent stops its children itself (`stop`), and a
        # killed parent's children get SIGTERM from the kernel (die_with_parent).
        child.process = await asyncio.create_subprocess_exec(
            *self._command(child.function),
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent(),
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.function, child.process.pid)

    async def _watch(self, child: Child) -> None:
        backoff = self.restart_min_s
        while True:
            assert child.process is not None
            code = await child.process.wait()
            child.exit_codes.append(code)
            if self._stopping:
                return
            if time.monotonic() - child.started_at > self.healthy_after_s:
                backoff = self.restart_min_s
            log.error("%s (pid %d) exited with %d; restarting in %.1f s", child.function, child.process.pid, code, backoff)
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            backoff = min(backoff * 2, self.restart_max_s)
            child.restarts += 1
            await self._spawn(child)

    def reload(self) -> None:
        """Hot reload: each child rebuilds and swaps its module (SIGHUP, see Host.reload)."""
        for child in self.children.values():
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGHUP)

    async def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM every child (each drains and exits), SIGKILL what is left after the grace period."""
        self._stopping = True
        await terminate([c.process for c in self.children.values() if c.process is not None], grace_s)
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


async def terminate(processes: list[asyncio.subprocess.Process], grace_s: float) -> None:
    """SIGTERM the running ones, wait up to `grace_s` for all, SIGKILL the rest."""
    running = [p for p in processes if p.returncode is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    if running:
        await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=grace_s)
    for process in running:
        if process.returncode is None:
            log.warning("pid %d did not stop within %.0f s; killing it", process.pid, grace_s)
            process.kill()
            await process.wait()
