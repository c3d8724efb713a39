"""Whether a TCP port can be listened on, and, when it cannot, which process holds it (for a clear error).

Linux's /proc says which socket listens on a port (/proc/net/tcp, tcp6) and which process holds that socket
(/proc/PID/fd): enough to tell a user "another `ebbtide up` in /that/folder has it". Only this user's
processes can be read; where /proc says nothing (another user, another system), the answer is None and
the caller says "in use".
"""

from __future__ import annotations

import errno
import os
import shlex
import socket
from pathlib import Path

PROC = Path("/proc")
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def port_taken(host: str, port: int) -> bool:
    """True when `port` on `host` cannot be listened on because something else listens there.

    Binds as nats-server (Go) does, with SO_REUSEADDR: a port held only by connections in TIME_WAIT is free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def listener_pid(port: int) -> int | None:
    """The pid of a process of this user that listens on TCP `port` (any address), None if none is seen."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # another user's process, or gone
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return int(entry.name)
            except OSError:
                continue
    return None


def describe_process(pid: int) -> str:
    """`ebbtide up` (pid 12, in /home/ada/shop), or `python3 -m http.server` (pid 13); `pid 14` when unreadable."""
    argv = _cmdline(pid)
    if not argv:
        return f"pid {pid}"
    ebbtide = _ebbtide_arguments(argv)
    command = f"ebbtide {_ebbtide_command(ebbtide)}" if ebbtide is not None else shlex.join([Path(argv[0]).name, *argv[1:]])
    if len(command) > 80:
        command = command[:77] + "..."
    try:
        where = f", in {os.readlink(PROC / str(pid) / 'cwd')}"
    except OSError:
        where = ""
    return f"`{command}` (pid {pid}{where})"


def describe_listener(port: int) -> str | None:
    """Who listens on `port`, in words; for an embedded nats-server, also whose it is and its data folder."""
    pid = listener_pid(port)
    if pid is None:
        return None
    argv = _cmdline(pid)
    if argv and Path(argv[0]).name == "nats-server":
        what = f"nats-server (pid {pid}"
        if "--store_dir" in argv[:-1]:
            store = Path(argv[argv.index("--store_dir") + 1])
            what += f", data in {store.parent if store.name == 'jetstream' else store}"
        what += ")"
        parent = _parent(pid)
        if parent is not None and parent > 1 and _ebbtide_arguments(_cmdline(parent)) is not None:
            what += f", the embedded server of {describe_process(parent)}"
        return what
    return describe_process(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _parent(pid: int) -> int | None:
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


# `ebbtide`'s options before its command that take a value (cli.py)
_OPTIONS_WITH_VALUE = ("-m", "--manifest", "--log-format")


def _ebbtide_command(arguments: list[str]) -> str:
    """The command of `ebbtide [options] COMMAND ...` ("up"), without the options before it."""
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in _OPTIONS_WITH_VALUE:
            skip = True
        elif not argument.startswith("-"):
            return argument
    return "..."


def _ebbtide_arguments(argv: list[str]) -> list[str] | None:
    """The arguments of an `ebbtide ...` command line (the console script, or `python -m ebbtide`), else None."""
    if argv and Path(argv[0]).name == "ebbtide":
        return argv[1:]
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "ebbtide":
        return argv[argv.index("-m") + 2 :]
    if len(argv) > 1 and Path(argv[1]).name == "ebbtide":  # python .../bin/ebbtide up
        return argv[2:]
    return None
