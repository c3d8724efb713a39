"""Running the commands written in the deploy files here, as the container would, against real servers.

The image cannot be built on the CI machines, so a test lays out a folder like the image's WORKDIR (the
manifest and the built modules, no sources, as in the runtime stage) and starts the exact command with
the exact environment of a compose service or a Deployment; only addresses that exist in a container
network (the NATS service, the trace collector, 0.0.0.0, fixed ports) are replaced by local ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ebbtide.broker import free_port
from ebbtide.broker.embedded import nats_server_binary

VENV_BIN = Path(sys.executable).parent
STOP_TIMEOUT_S = 40.0


@dataclass
class Launch:
    """One container as written: where it came from, its command and its environment."""

    label: str  # e.g. "compose service receiver-express #2"
    command: list[str]
    env: dict[str, str]
    metrics_port: int = 0  # the local port it got instead of the written one
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def log_tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# Programs of the base image (python:3.11-slim) that a compose entrypoint may use, besides the venv's.
BASE_IMAGE_PROGRAMS = ("sh",)


def local_command(command: Sequence[str]) -> list[str]:
    """The same command with the image's programs (on PATH in /opt/venv/bin) taken from this venv."""
    if command[0] in BASE_IMAGE_PROGRAMS:
        program = shutil.which(command[0]) or command[0]
    else:
        program = {"python": sys.executable}.get(command[0]) or str(VENV_BIN / command[0])
    if not Path(program).exists():
        raise AssertionError(f"{command[0]!r}: not installed by the package ({program} missing)")
    return [program, *command[1:]]


def image_root(root: Path, manifest_text: str, wasm_dir: Path) -> Path:
    """WORKDIR of the runtime image: ebbtide.toml and build/wasm/*.wasm, no functions/ sources, no Zig."""
    root.mkdir(parents=True)
    (root / "ebbtide.toml").write_text(manifest_text)
    shutil.copytree(wasm_dir, root / "build" / "wasm")
    return root


def start(launch: Launch, cwd: Path, logs: Path) -> None:
    env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(cwd), "LANG": "C.UTF-8", **launch.env}
    launch.log = logs / f"{launch.label.replace(' ', '_').replace('#', '')}.log"
    with launch.log.open("wb") as out:
        launch.process = subprocess.Popen(
            local_command(launch.command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # not listening yet


async def wait_ready(launch: Launch, timeout: float = 60.0) -> None:
    """Until /readyz answers 200; fails at once if the process exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    assert launch.process is not None
    while await asyncio.to_thread(http_status, f"http://127.0.0.1:{launch.metrics_port}/readyz") != 200:
        if launch.process.poll() is not None:
            raise AssertionError(f"{launch.label} exited with {launch.process.returncode}:\n{launch.log_tail()}")
        if loop.time() > deadline:
            raise AssertionError(f"{launch.label}: /readyz not 200 within {timeout} s:\n{launch.log_tail()}")
        await asyncio.sleep(0.1)


def stop_all(launches: Sequence[Launch]) -> dict[str, int | None]:
    """SIGTERM to every process (as `docker stop` / Kubernetes do), then their exit codes."""
    for launch in launches:
        if launch.process is not None and launch.process.poll() is None:
            launch.process.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    for launch in launches:
        if launch.process is None:
            continue
        try:
            codes[launch.label] = launch.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            launch.process.kill()
            launch.process.wait()
            codes[launch.label] = None
    return codes


# -- a fake OTLP/HTTP collector: records what the exporters post ---------------------------------------


@dataclass
class Collector:
    port: int = 0
    posts: list[tuple[str, bytes]] = field(default_factory=list)  # (path, body)
    _server: asyncio.base_events.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Collector:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # the exporter keeps its connection alive between posts
                request = await reader.readline()
                if not request:
                    return
                method, path, _ = request.decode("latin-1").split(" ", 2)
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.posts.append((f"{method} {path}", body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()


# -- a NATS cluster from a configuration file ------------------------------------------------------------


def shared_free_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (loopback addresses)."""
    for _ in range(100):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")


class ConfiguredCluster:
    """nats-server nodes started with the given configuration file, as the StatefulSet's pods are (or, with
    size 1, as compose's single server).

    Only what a pod gets from Kubernetes is supplied here: POD_NAME (nats-0, nats-1, ...), and local ports,
    routes and a store folder in place of the fixed ports and pod DNS names. Each node's configuration is
    written next to `config`, so that its relative `include`s resolve as in the container: give it a file
    in a folder laid out like the container's (see mounts.py), never one in the repository.
    """

    def __init__(self, config: Path, root: Path, size: int, hosts: list[str] | None = None) -> None:
        """`hosts`: a loopback address per node (127.0.0.11, ...), all nodes on the same ports, as pods are
        (KEDA's scaler reaches a node's monitoring port at the node's address and the one port it was given);
        default: every node on 127.0.0.1, each on ports of its own."""
        self.root = root
        self.config_dir = config.parent
        root.mkdir(parents=True)
        # A loopback address for 0.0.0.0 (tests bind loopback only) and a folder of each node's own for the
        # volume mounted at /data. The rest of the file is used as written.
        self.config_text = config.read_text()
        if "store_dir: /data" not in self.config_text:
            raise AssertionError(f"{config}: expected JetStream's store_dir on the volume, /data")
        self.hosts = hosts or ["127.0.0.1"] * size
        if hosts:
            self.ports, self.monitor_ports, self.route_ports = ([shared_free_port(hosts)] * size for _ in range(3))
        else:
            self.ports = [free_port() for _ in range(size)]
            self.monitor_ports = [free_port() for _ in range(size)]
            self.route_ports = [free_port() for _ in range(size)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def urls(self) -> list[str]:
        return [f"nats://{host}:{port}" for host, port in zip(self.hosts, self.ports)]

    def monitor_url(self, node: int) -> str:
        return f"http://{self.hosts[node]}:{self.monitor_ports[node]}"

    def start(self) -> ConfiguredCluster:
        routes = ",".join(f"nats://{host}:{port}" for host, port in zip(self.hosts, self.route_ports))
        for i, (host, port, monitor, route) in enumerate(zip(self.hosts, self.ports, self.monitor_ports, self.route_ports)):
            config = self.config_dir / f"local-nats-{i}.conf"
            config.write_text(
                self.config_text.replace("0.0.0.0", host).replace("store_dir: /data", f'store_dir: "{self.root / f"data-{i}"}"')
            )
            clustering = ["--cluster", f"nats://{host}:{route}", "--routes", routes] if len(self.ports) > 1 else []
            with (self.root / f"nats-{i}.log").open("wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        [
                            nats_server_binary(),
                            "--config",
                            str(config),
                            "--addr",
                            host,
                            "--port",
                            str(port),
                            "--http_port",
                            str(monitor),
                            *clustering,
                        ],
                        env={"POD_NAME": f"nats-{i}", "PATH": os.environ.get("PATH", "")},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        return self

    def monitor(self, node: int, path: str) -> dict:
        with urllib.request.urlopen(f"{self.monitor_url(node)}{path}", timeout=2) as reply:
            return json.loads(reply.read())

    def ready(self) -> bool:
        """Every node healthy with JetStream, one meta leader, a meta group of all nodes."""
        leaders = set()
        for node, process in enumerate(self.processes):
            if process.poll() is not None:
                log = (self.root / f"nats-{node}.log").read_text(errors="replace")
                raise AssertionError(f"nats-{node} exited with {process.returncode}:\n{log[-2000:]}")
            try:
                if self.monitor(node, "/healthz?js-enabled-only=true").get("status") != "ok":
                    return False
                meta = self.monitor(node, "/jsz").get("meta_cluster") or {}
            except OSError:
                return False
            if len(self.processes) == 1:
                continue  # a single server: no meta group
            if not meta.get("leader") or meta.get("cluster_size") != len(self.processes):
                return False
            leaders.add(meta["leader"])
        return len(self.processes) == 1 or len(leaders) == 1

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
