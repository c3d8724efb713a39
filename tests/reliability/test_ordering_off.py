"""The ordering test can fail: run with ordering switched off, it must find writes out of order.

tests/reliability/test_ordering.py judges every outbox write against each order's event sequence
(tests/ordering_check.py). A checker that never fails proves nothing, so here that same test runs in a
child pytest with `EBBTIDE_ORDERING_OFF=1` (its manifest without `order_by`: events on the bare subject, no
partitions) on a small run (ORDERS orders, 3 events each, through the same replicas, kill -9 and server
restart), and must fail with out-of-order writes counted by the checker.

Relies on: the switch `EBBTIDE_ORDERING_OFF=1` and the run size `EBBTIDE_RELIABILITY_ORDERS` that
tests/reliability/test_ordering.py reads, and the per-bucket `SequenceCheck(...)` lines it prints before it
asserts. (About 1 % of the writes came out of order with ordering off: 8 of 900 with 300 orders, 308 of
30,000 with 10,000; ORDERS keeps a few dozen expected.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

ORDERS = 500
RUN_TIMEOUT_S = 600


def test_the_ordering_test_fails_with_writes_out_of_order_when_ordering_is_off() -> None:
    env = {**os.environ, "EBBTIDE_ORDERING_OFF": "1", "EBBTIDE_RELIABILITY_ORDERS": str(ORDERS)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability/test_ordering.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    checks = re.findall(r"^(outbox-[\w-]+): SequenceCheck\((.*)\)$", output, re.M)
    assert checks, f"the ordering test printed no checks (exit {done.returncode}):\n{output[-4000:]}"
    counted = {bucket: dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", fields)) for bucket, fields in checks}
    out_of_order = sum(check["violations"] for check in counted.values())
    assert done.returncode == 1, f"ordering off, the ordering test passed (exit {done.returncode}): {counted}"
    assert out_of_order > 0, f"ordering off, no write out of order was found: {counted}\n{output[-4000:]}"
    print(f"\nordering off, {ORDERS} orders x 3 events: {out_of_order} writes out of order ({counted})")
