"""`ebbtide outbox get|list` from the shell, against a real `ebbtide up` (embedded server, authentication on)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest

from ebbtide.outbox import OutboxEntry, format_table, format_value, is_valid_key
from ebbtide.workload.orders import encode_order, generate_orders
from tests.conftest import manifest_copy, port_open, wait_for_consumers, wait_until

ORDERS = 20
SEED = 4


class RunningUp:
    def __init__(self, manifest: Path, port: int, env: dict[str, str]) -> None:
        self.manifest, self.url, self.env = manifest, f"nats://127.0.0.1:{port}", env
        self.admin_seed = manifest.parent / "nats" / "auth" / "admin.nk"

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ebbtide",
            "-m",
            str(self.manifest),
            *args,
            env=env or self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


@pytest.fixture
def up(tmp_path: Path, reference_manifest) -> Iterator[RunningUp]:
    manifest, port = manifest_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_NATS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "ebbtide", "-m", str(manifest), "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert process.poll() is None and time.monotonic() < deadline, "ebbtide up did not start its server"
            time.sleep(0.05)
        yield RunningUp(manifest, port, env)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output


async def test_get_and_list_read_back_what_the_pipeline_stored(up: RunningUp) -> None:
    nc = await nats.connect(up.url, nkeys_seed=str(up.admin_seed))
    await wait_for_consumers(nc)
    orders = generate_orders(ORDERS, SEED)
    bucket_of = {o.order_id: f"outbox-{o.delivery.lower()}" for o in orders}

    absent = await up.cli("outbox", "get", "1")
    assert absent.returncode == 1 and absent.stdout == ""
    assert "no key '1' in outbox-express, outbox-standard" in absent.stderr

    # A reader that waits, started before the order exists: the write wakes it (no polling race).
    waiting = asyncio.create_task(up.cli("outbox", "get", "--wait", "30", "1"))
    await asyncio.sleep(0)
    published = await up.cli("publish", "--count", str(ORDERS), "--seed", str(SEED))
    assert published.returncode == 0, published.stderr
    got = await waiting
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == json.loads(encode_order(orders[0]))

    kv = {bucket: await nc.jetstream().key_value(bucket) for bucket in ("outbox-express", "outbox-standard")}

    async def all_stored() -> bool:
        return sum([(await kv[b].status()).values for b in kv]) == ORDERS

    await wait_until(all_stored)

    express = next(o for o in orders if o.delivery == "Express")
    one = await up.cli("outbox", "get", "--bucket", "outbox-express", str(express.order_id))
    assert one.returncode == 0, one.stderr
    assert one.stdout.encode() == (await kv["outbox-express"].get(str(express.order_id))).value + b"\n"
    wrong = await up.cli("outbox", "get", "--bucket", "outbox-standard", str(express.order_id))
    assert wrong.returncode == 1 and f"no key '{express.order_id}' in outbox-standard" in wrong.stderr

    listed = await up.cli("outbox", "list")
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split()[:2] == ["BUCKET", "KEY"]
    rows = [(line.split()[0], int(line.split()[1])) for line in lines]
    expected = sorted(bucket_of.items(), key=lambda item: (item[1], item[0]))  # bucket by bucket, keys in order
    assert rows == [(bucket, key) for key, bucket in expected]
    limited = await up.cli("outbox", "list", "--limit", "3")
    assert limited.returncode == 0 and len(limited.stdout.splitlines()) == 1 + 3

    # A deleted key is gone, as for `nats kv get`.
    await kv["outbox-express"].delete(str(express.order_id))
    gone = await up.cli("outbox", "get", str(express.order_id))
    assert gone.returncode == 1
    relisted = await up.cli("outbox", "list")
    assert len(relisted.stdout.splitlines()) == 1 + ORDERS - 1

    # --nats-url before or after the action; credentials from EBBTIDE_NATS_* as for every client command.
    env = {**up.env, "EBBTIDE_NATS_NKEY_SEED_FILE": str(up.admin_seed)}
    for args in (("outbox", "--nats-url", up.url, "get", "2"), ("outbox", "get", "2", "--nats-url", up.url)):
        done = await up.cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["orderId"] == 2
    await nc.close()


async def test_errors_name_the_problem(up: RunningUp) -> None:
    nc = await nats.connect(up.url, nkeys_seed=str(up.admin_seed))
    await wait_for_consumers(nc)
    await nc.close()
    for args, code, message in [
        (("outbox", "get", "a b"), 2, "'a b' is not a KV key"),
        (("outbox", "get", "1", "--wait", "-1"), 2, "--wait must be 0 or more"),
        (("outbox", "list", "--limit", "0"), 2, "--limit must be at least 1"),
        (("outbox",), 2, "ACTION"),
        (("outbox", "get", "--bucket", "outbox-nope", "1"), 2, "no KV bucket 'outbox-nope' in the manifest"),
        (("outbox", "list", "--bucket", "outbox-nope"), 2, "no KV bucket 'outbox-nope' in the manifest"),
        (("outbox", "get", "1", "--nats-url", "nats://127.0.0.1:1"), 1, "is `ebbtide up` running?"),
    ]:
        done = await up.cli(*args)
        assert done.returncode == code, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def test_keys_and_table() -> None:
    assert is_valid_key("42") and is_valid_key("a.b-c_d/e=f")
    assert not any(is_valid_key(k) for k in ("", "a b", ".a", "a.", "a*", "a>", "a..b"))
    entries = [OutboxEntry("outbox-express", "7", 3, "2026-11-29T10:00:00.000Z", b'{"orderId": 7,\n "x": "' + b"y" * 300 + b'"}')]
    table = format_table(entries, width=80).splitlines()
    assert table[0].split() == ["BUCKET", "KEY", "REV", "STORED", "AT", "SIZE", "VALUE"]
    assert table[1].startswith('outbox-express    7    3  2026-11-29T10:00:00.000Z   324  {"orderId": 7, "x"')
    assert table[1].endswith("…")
    assert len(table[1]) == 80 and "\n" not in table[1]
    assert format_table([]) == "no entries"
    assert format_value(msgspec.structs.replace(entries[0], value=b"\xff{}")) == "\\xff{}"  # binary stays printable
