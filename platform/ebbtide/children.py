"""Child processes that die with their parent: a SIGKILLed `ebbtide up` leaves no function process and no
embedded nats-server running, orphaned.

Linux's prctl(PR_SET_PDEATHSIG) makes the kernel send the child a signal when its parent goes, however it
goes; SIGTERM, so each child stops as it does on an ordinary shutdown (a function finishes or hands back
its batches, nats-server flushes JetStream). Chosen over a child watching its parent because the kernel
does it at once, without polling, and it works for a child we do not write (nats-server).

Two caveats, both handled by how ebbtide starts children: the signal follows the *thread* that started the
child (every child is started from the main thread: the event loop's, or the CLI's), and a parent that
died between fork and prctl would be missed, so the child checks that its parent is still the one that
started it. Elsewhere than Linux there is no such call: the children then outlive a killed parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess / asyncio.create_subprocess_exec; None where the kernel offers nothing."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, in the parent: between fork and exec the child only makes the call.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the call took effect: never start
            os._exit(128 + sigterm)

    return in_child
