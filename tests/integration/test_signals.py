"""Signals at every stage (issue 13, item 3), with real processes and real signals.

A process that cannot reach NATS stops on SIGTERM or SIGINT with a clear error instead of retrying forever;
`up` in that state stops without killing its children; and the children of `up` (the functions' processes
and the embedded nats-server) die with it even when it is killed with SIGKILL. Ctrl-C stops `ebbtide demo`
(issue 27), and a second `up` whose embedded server cannot have its ports or data folder says so and exits
2, never joining the first one's server.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from ebbtide.broker import free_port
from tests.conftest import GUESTS, manifest_copy

# Bounds on waiting for an outcome, far above what it takes: a slow machine passes, a hang fails.
START_S = 60.0
STOP_S = 30.0
# Longer than STOP_S: a child that ignored SIGTERM would hold `up` past STOP_S (the supervisor waits
# shutdown_grace_s + 5 s before it kills), so stopping within STOP_S shows the children stopped themselves.
GRACE_S = 60


def _manifest(tmp_path: Path, functions: tuple[str, ...] = ("f",)) -> Path:
    """Functions on the chaos guest (prebuilt: nothing to compile), an embedded server without auth on free ports."""
    wasm = tmp_path / "build" / "wasm" / "m.wasm"
    wasm.parent.mkdir(parents=True)
    wasm.write_bytes(wasmtime.wat2wasm((GUESTS / "chaos.wat").read_text()))
    text = textwrap.dedent(f"""
        [embedded]
        data_dir = "nats"
        port = {free_port()}
        monitor_port = {free_port()}
        auth = false
        [streams.S]
        subjects = ["in.>", "out.>"]
        retention = "workqueue"
        [modules.m]
        prebuilt = true
    """)
    for name in functions:
        text += textwrap.dedent(f"""
            [functions.{name}]
            module = "m"
            trigger = "in.{name}"
            publish = ["out.{name}"]
            shutdown_grace_s = {GRACE_S}
        """)
    path = tmp_path / "ebbtide.toml"
    path.write_text(text)
    return path


class Ebbtide:
    """`ebbtide ...` in a process of its own, its output (both streams) in a file read while it runs."""

    def __init__(self, tmp_path: Path, manifest: Path, *args: str, own_group: bool = False) -> None:
        """`own_group`: in a process group of its own, as a shell runs a command (Ctrl-C signals the group)."""
        self.log = tmp_path / f"ebbtide-{args[0]}-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ebbtide", "--log-format", "text", "-m", str(manifest), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=tmp_path,
                process_group=0 if own_group else None,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = START_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode} before {what}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def stopped_within(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {timeout} s after the signal:\n{self.output}") from None

    def kill(self) -> None:
        """Test clean-up: this process, if it still runs, and whatever it started."""
        if self.process.poll() is None:
            for pid in [*children_of(self.process.pid), self.process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process.wait()


def children_of(pid: int) -> list[int]:
    """Running processes whose parent is `pid`."""
    stats = {int(entry.name): _stat(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    return [child for child, stat in stats.items() if stat is not None and stat[1] == pid and stat[0] != "Z"]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it has stopped running)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_that_cannot_reach_nats_stops_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    run = Ebbtide(tmp_path, _manifest(tmp_path), "run", "--function", "f", "--nats-url", url)
    try:
        run.wait_for("a failed connection attempt", lambda: "Connection refused" in run.output)
        run.process.send_signal(sig)
        code = run.stopped_within(STOP_S)
    finally:
        run.kill()
    output = run.output
    assert code == 130, output
    assert f"ebbtide: stopped by {sig.name} while connecting to {url}: [Errno 111] Connection refused" in output
    assert output.count("Connection refused") <= 3, "retries are not logged one line each"


def test_up_that_cannot_reach_nats_stops_with_its_children(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    up = Ebbtide(tmp_path, _manifest(tmp_path, ("f", "g")), "up", "--processes", "per-function", "--nats-url", url)
    try:
        # the two functions' processes, and `ebbtide provision --wait` waiting for the server too
        up.wait_for("three children", lambda: len(children_of(up.process.pid)) == 3)
        # all three failing to connect: at two, one function's process may still be starting (it then stops
        # on SIGTERM before it connects, and says nothing about connecting)
        up.wait_for("all three children failing to connect", lambda: up.output.count("Connection refused") >= 3)
        up.process.send_signal(signal.SIGTERM)
        code = up.stopped_within(STOP_S)
    finally:
        up.kill()
    assert code == 0, up.output
    assert "killing it" not in up.output  # each child stopped on its SIGTERM, none had to be killed
    assert up.output.count(f"stopped by SIGTERM while connecting to {url}") == 2, up.output


def test_up_that_cannot_reach_nats_in_one_process_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    up = Ebbtide(tmp_path, _manifest(tmp_path), "up", "--processes", "single", "--nats-url", url)
    try:
        up.wait_for("a failed connection attempt", lambda: "Connection refused" in up.output)
        up.process.send_signal(signal.SIGTERM)
        code = up.stopped_within(STOP_S)
    finally:
        up.kill()
    assert code == 130, up.output
    assert f"stopped by SIGTERM while connecting to {url}" in up.output


def test_the_children_of_up_die_with_it_when_it_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves `up` no chance to stop anything: the kernel tells its children (the embedded nats-server
    and one process per function), and each stops as on SIGTERM."""
    up = Ebbtide(tmp_path, _manifest(tmp_path, ("f", "g")), "up", "--processes", "per-function")
    children: list[int] = []
    try:
        up.wait_for("every function running", lambda: "function f on" in up.output and "function g on" in up.output)
        # `up` provisions in a child of its own (`ebbtide provision --wait`): the functions start once it has
        # created their consumers, which may be before it has exited. `up` says "provisioned" once it has
        # (it waited for that child): counting earlier found it still running, 4 children (issue 27).
        up.wait_for("provisioning to end", lambda: "provisioned: streams" in up.output)
        children = children_of(up.process.pid)
        assert len(children) == 3, up.output  # nats-server, f, g
        up.process.kill()
        up.process.wait()
        deadline = time.monotonic() + STOP_S
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        up.kill()
        orphans = [pid for pid in children if alive(pid)]
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
    assert not orphans, f"still running {STOP_S} s after `up` was killed: {orphans}\n{up.output}"


def test_each_process_of_up_says_what_it_runs(tmp_path: Path) -> None:
    """Issue 13, item 6: a per-function child said "single process mode"; each line now says what is true."""
    up = Ebbtide(tmp_path, _manifest(tmp_path, ("f", "g")), "up", "--processes", "per-function")
    try:
        up.wait_for(
            "every function running",
            lambda: "running f in this process" in up.output and "running g in this process" in up.output,
        )
        up.process.send_signal(signal.SIGTERM)
        code = up.stopped_within(STOP_S)
    finally:
        up.kill()
    assert code == 0, up.output
    assert "running f, g, one supervised process each" in up.output
    assert "process mode" not in up.output, up.output


@pytest.mark.parametrize("to", ["pid", "group"])
def test_ctrl_c_stops_the_demo(tmp_path: Path, to: str) -> None:
    """Issue 27: SIGINT to the demo's pid, while orders flowed, was ignored (the cancellation it caused was
    lost in a request), and SIGINT to its process group (Ctrl-C in a terminal) stopped the functions'
    processes, which the supervisor restarted: the demo ended "OK" with exit code 0."""
    manifest, _ = manifest_copy(tmp_path)
    orders = 50_000  # many seconds of flow on any machine (the raw limit is ~13,000/s on a quiet 2-core one)
    demo = Ebbtide(tmp_path, manifest, "demo", "--orders", str(orders), "--data-dir", str(tmp_path / "demo"), own_group=True)
    children: list[int] = []
    try:
        demo.wait_for("the demo's first progress line", lambda: "dead letters: " in demo.output)
        children = children_of(demo.process.pid)
        assert len(children) == 4, demo.output  # nats-server and one process per function
        if to == "pid":
            demo.process.send_signal(signal.SIGINT)
        else:
            os.killpg(demo.process.pid, signal.SIGINT)
        code = demo.stopped_within(STOP_S)
    finally:
        demo.kill()
        orphans = [pid for pid in children if alive(pid)]
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
    output = demo.output
    assert "restarting" not in output, output
    assert code == 130, output
    assert "result" not in output, output  # no summary
    assert "ebbtide: demo stopped by SIGINT: the functions and the embedded server have stopped" in output
    assert not orphans, f"still running after the demo stopped: {orphans}\n{output}"


def test_a_second_up_never_joins_the_first_ones_server(tmp_path: Path) -> None:
    """Issue 27: a second `up` whose embedded server could not bind its ports printed "embedded nats-server
    at ..." and ran its functions on the first `up`'s server. Now it names what holds the port or the data
    folder, exits 2, and starts nothing."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first_manifest = _manifest(first_dir)
    first = Ebbtide(first_dir, first_manifest, "up", "--processes", "per-function")
    try:
        first.wait_for("the function running", lambda: "running f in this process" in first.output)
        second_manifest = _manifest(second_dir)  # a folder of its own, on free ports
        second_text = second_manifest.read_text()

        def with_port_of_first(key: str) -> str:
            """The second manifest, with the first one's `key` (port or monitor_port) in [embedded]."""
            taken = re.search(rf"^{key} = (\d+)$", first_manifest.read_text(), re.M)
            assert taken is not None
            return re.sub(rf"^{key} = \d+$", f"{key} = {taken[1]}", second_text, flags=re.M)

        cases = {
            # the same folder: its data folder (and ports) are the first `up`'s
            "data folder": (first_dir, first_manifest.read_text()),
            "client port": (second_dir, with_port_of_first("port")),
            "monitoring port": (second_dir, with_port_of_first("monitor_port")),
        }
        for what, (folder, text) in cases.items():
            manifest = folder / "ebbtide.toml"
            manifest.write_text(text)
            second = Ebbtide(folder, manifest, "up", "--processes", "per-function")
            try:
                code = second.stopped_within(START_S)
            finally:
                second.kill()
            output = second.output
            assert code == 2, f"{what}:\n{output}"
            assert f"{what} " in output and "is in use by" in output, f"{what}:\n{output}"
            # by what: the first `up` (its pid and folder), or its nats-server, the embedded server of that `up`
            assert f"(pid {first.process.pid}, in {first_dir})" in output, f"{what}:\n{output}"
            assert "embedded nats-server at" not in output and "running f" not in output, f"{what}:\n{output}"
        assert first.process.poll() is None, first.output  # the first `up` runs on, undisturbed
        first.process.send_signal(signal.SIGTERM)
        assert first.stopped_within(STOP_S) == 0, first.output
    finally:
        first.kill()


def test_up_with_its_console_port_taken_says_so_and_exits(tmp_path: Path) -> None:
    """A new user's stumble: `up --console PORT` with PORT taken printed the console's "cannot listen" once and
    ran on without a console. Now `up` names the port and what holds it, exits 2, and runs nothing."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        up = Ebbtide(tmp_path, _manifest(tmp_path), "up", "--processes", "per-function", "--console", str(port))
        try:
            code = up.stopped_within(START_S)
        finally:
            up.kill()
    assert code == 2, up.output
    assert f"the console's port 127.0.0.1:{port} is in use" in up.output, up.output
    assert "running f" not in up.output, up.output
