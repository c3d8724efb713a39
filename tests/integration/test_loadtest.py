"""The Locust load test (loadtest/) against a running `ebbtide up`, and its small gevent NATS client."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import nats
import nkeys
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from tests.conftest import REPO, manifest_copy, outbox_writes, port_open, read_stream, wait_for_consumers

LOADTEST = REPO / "loadtest"
LOCUST = Path(sys.executable).with_name("locust")
USERS, RATE_PER_USER = 5, 200  # ~10,000 orders in 10 s: enough load, and the machine is shared


def load_natsclient() -> ModuleType:
    """loadtest/ is not a package (Locust puts the locustfile's folder on sys.path): load the file by path."""
    name = "loadtest_natsclient"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LOADTEST / "natsclient.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


async def outbox_keys(nc: NatsClient, bucket: str) -> set[int]:
    """The keys of a KV bucket (from the stream's subjects)."""
    info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>")
    return {int(subject.rsplit(".", 1)[1]) for subject in (info.state.subjects or {})}


async def published_bodies(nc: NatsClient) -> dict[str, bytes]:
    """orderId -> the body of each order published to orders.ingress, as the ORDERS stream stored it."""
    return {str(json.loads(msg.data)["orderId"]): msg.data for msg in await read_stream(nc, "ORDERS", "orders.ingress")}


async def test_headless_locust_run_against_ebbtide_up(tmp_path: Path, reference_manifest) -> None:
    manifest, port = manifest_copy(tmp_path)
    url = f"nats://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_NATS") and k != "NATS_URL"}
    up = subprocess.Popen(
        [sys.executable, "-m", "ebbtide", "-m", str(manifest), "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert up.poll() is None and time.monotonic() < deadline, (
                f"ebbtide up did not start its server: {up.stdout.read() if up.poll() is not None else ''}"
            )
            await asyncio.sleep(0.05)
        # Authentication is on by default: orders go in as the generated `ingress` user (password from the
        # file `up` wrote, given as ebbtide's variables), which may not read the outboxes: the e2e reader
        # and this test use the admin NKEY.
        auth = tmp_path / "nats" / "auth"
        ingress = dict(line.split("=", 1) for line in (auth / "ingress.env").read_text().split())
        nc = await nats.connect(url, nkeys_seed=str(auth / "admin.nk"))
        await wait_for_consumers(nc)

        locust = await asyncio.create_subprocess_exec(
            str(LOCUST),
            "-f",
            str(LOADTEST / "locustfile.py"),
            "--headless",
            "-u",
            str(USERS),
            "-r",
            str(USERS),
            "-t",
            "10s",
            "--host",
            url,
            "--user-rate",
            str(RATE_PER_USER),
            "--e2e-timeout",
            "20",
            "--csv",
            str(tmp_path / "run"),
            "--json-file",
            str(tmp_path / "run"),
            "--only-summary",
            "--exit-code-on-error",
            "1",
            "--record-orders",
            str(tmp_path / "orders.json"),
            "--e2e-nkey-seed-file",
            str(auth / "admin.nk"),
            cwd=tmp_path,
            env=env | ingress,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(locust.communicate(), 90))[0].decode()
        assert locust.returncode == 0, output

        # Locust's own results: the JSON file is written at exit; the CSV must agree with it.
        stats = {(row["method"], row["name"]): row for row in json.loads((tmp_path / "run.json").read_text())}
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
        assert set(stats) == {("jetstream", "orders.ingress"), ("e2e", "outbox-express"), ("e2e", "outbox-standard")}, (
            stats.keys()
        )
        for key, row in stats.items():
            assert row["num_failures"] == 0, (key, output)
            assert row["num_requests"] > 0, key
            assert int(rows[key]["Request Count"]) == row["num_requests"], (key, rows[key])
            assert rows[key]["Failure Count"] == "0", key
        assert rows[("", "Aggregated")]["Failure Count"] == "0"
        for bucket in ("outbox-express", "outbox-standard"):
            e2e = stats[("e2e", bucket)]
            # sane latencies: positive, and within the e2e timeout (anything later would be a failure)
            assert 0 < e2e["min_response_time"] <= e2e["max_response_time"] < 20_000, e2e
            assert float(rows[("e2e", bucket)]["99%"]) > 0
        published = stats[("jetstream", "orders.ingress")]["num_requests"]
        measured = sum(stats[("e2e", b)]["num_requests"] for b in ("outbox-express", "outbox-standard"))
        # every acked order got its e2e result; a user stopped after the outbox write but before its ack
        # adds an e2e result without a publish result
        assert published <= measured <= published + USERS, (published, measured)

        # Every order the run published is in its outbox, once; nothing else is there.
        record = json.loads((tmp_path / "orders.json").read_text())
        assert record["failed"] == [] and len(record["interrupted"]) <= USERS, record["interrupted"]
        assert sum(len(record[b]) for b in ("outbox-express", "outbox-standard")) == measured
        sent = await published_bodies(nc)
        for bucket in ("outbox-express", "outbox-standard"):
            keys = await outbox_keys(nc, bucket)
            confirmed = set(record[bucket])
            assert confirmed, bucket
            assert len(confirmed) == len(record[bucket]), "order ids repeat"
            assert keys - confirmed <= set(record["interrupted"]), (bucket, sorted(keys - confirmed)[:10])
            # Each written once, counted in writes (an order written twice keeps one key), with the body
            # Locust published: as the ORDERS stream stored it (limits retention keeps the published orders).
            writes = await outbox_writes(nc, bucket, {key: sent[key] for key in map(str, confirmed)})
            assert (writes.stored, writes.lost, writes.written_twice, writes.wrong_body) == (len(confirmed), 0, 0, 0), (
                bucket,
                writes,
            )
        await nc.close()
    finally:
        up.send_signal(signal.SIGTERM)
        up_output, _ = up.communicate(timeout=30)
    assert up.returncode == 0, up_output


async def test_locust_reports_failures_when_no_stream_captures_the_subject(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    """A bare server (no ORDERS stream): every publish fails (no responders), the exit code says so."""
    locust = await asyncio.create_subprocess_exec(
        str(LOCUST),
        "-f",
        str(LOADTEST / "locustfile.py"),
        "--headless",
        "-u",
        "1",
        "-r",
        "1",
        "-t",
        "2s",
        "--host",
        nats_server.url,
        "--user-rate",
        "20",
        "--json-file",
        str(tmp_path / "run"),
        "--csv",
        str(tmp_path / "run"),
        "--only-summary",
        "--exit-code-on-error",
        "3",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(locust.communicate(), 60))[0].decode()
    assert locust.returncode == 3, output
    stats = {(row["method"], row["name"]): row for row in json.loads((tmp_path / "run.json").read_text())}
    publishes = stats[("jetstream", "orders.ingress")]
    assert publishes["num_requests"] > 0 and publishes["num_failures"] == publishes["num_requests"]
    failures = list(csv.DictReader((tmp_path / "run_failures.csv").open()))
    assert [(f["Method"], f["Name"], f["Error"]) for f in failures] == [
        ("jetstream", "orders.ingress", "JetStreamError(\"no responders: no JetStream stream captures 'orders.ingress'\")")
    ]
    assert ("e2e", "outbox-express") not in stats  # a failed publish is counted once, not again as lost


def test_client_publish_subscribe_and_jetstream_acks(nats_server: EmbeddedNats) -> None:
    client = load_natsclient()
    asyncio.run(add_stream(nats_server.url))
    conn = client.NatsConnection.connect(nats_server.url)
    seen = []
    conn.subscribe("lt.>", seen.append)
    conn.flush()
    ack = conn.js_publish("lt.a", b"one", {"Nats-Msg-Id": "m-1"})
    assert (ack.stream, ack.seq, ack.duplicate) == ("LT", 1, False)
    assert conn.js_publish("lt.a", b"one", {"Nats-Msg-Id": "m-1"}).duplicate  # deduplicated by JetStream
    conn.publish("lt.core", b"two")
    with pytest.raises(client.JetStreamError, match="no responders"):
        conn.js_publish("elsewhere", b"x", timeout=2)
    with pytest.raises(ValueError, match="max_payload"):
        conn.publish("lt.big", b"x" * (conn.max_payload + 1))
    conn.flush()
    assert [(m.subject, m.payload, m.headers) for m in seen] == [
        ("lt.a", b"one", {"Nats-Msg-Id": "m-1"}),
        ("lt.a", b"one", {"Nats-Msg-Id": "m-1"}),
        ("lt.core", b"two", {}),
    ]
    conn.close()
    with pytest.raises(client.ConnectionClosed, match="closed by the client"):
        conn.js_publish("lt.a", b"three")


def test_client_errors_name_the_cause(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    client = load_natsclient()
    with pytest.raises(client.ConnectionClosed, match="cannot connect to NATS at nats://127.0.0.1:1"):
        client.NatsConnection.connect("nats://127.0.0.1:1", timeout=2)
    with pytest.raises(ValueError, match="unsupported NATS URL scheme 'tls'"):
        client.parse_url("tls://127.0.0.1:4222")
    assert client.parse_url("nats://u:p@a:1, b") == [client.Endpoint("a", 1, "u", "p"), client.Endpoint("b", 4222)]
    assert client.parse_url("nats://secret@a").pop().token == "secret"

    # The server goes away while a publish waits for its ack: the waiting call fails at once, with the reason.
    conn = client.NatsConnection.connect(nats_server.url)
    conn.subscribe("svc", lambda msg: None)  # takes the request, never answers
    conn.flush()
    import gevent

    waiting = gevent.spawn(conn.js_publish, "svc", b"x", None, 30)
    gevent.sleep(0.2)
    nats_server.stop()
    with pytest.raises(client.ConnectionClosed, match="server closed the connection|read failed"):
        waiting.get(timeout=10)


async def add_stream(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(name="LT", subjects=["lt.>"])
    await nc.close()


def test_client_credentials_and_refused_subscriptions(tmp_path: Path) -> None:
    """A user may publish orders but not read the outboxes: the refusal is an error that names it.
    Another user, with an NKEY, may read them."""
    client = load_natsclient()
    seed = tmp_path / "reader.nk"
    seed.write_bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
    reader_key = nkeys.from_seed(bytearray(seed.read_bytes())).public_key.decode()
    config = tmp_path / "auth.conf"
    config.write_text(
        'authorization { users = [{user: "ingress", password: "s3cret", permissions: {'
        'publish: {allow: ["orders.ingress"]}, subscribe: {allow: ["_INBOX.>"]}}}, '
        f'{{nkey: "{reader_key}", permissions: {{subscribe: {{allow: ["$KV.>"]}}}}}}] }}\n'
    )
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, extra_args=("--config", str(config))) as server:
        address = f"127.0.0.1:{server.port}"
        with pytest.raises(client.ConnectionClosed, match="Authorization Violation"):
            client.NatsConnection.connect(f"nats://ingress:wrong@{address}", timeout=5)
        conn = client.NatsConnection.connect(f"nats://ingress:s3cret@{address}")
        conn.subscribe("_INBOX.mine", lambda msg: None)
        conn.check_subscriptions()  # allowed
        conn.subscribe("$KV.outbox-express.>", lambda msg: None)
        with pytest.raises(client.NatsError, match='Permissions Violation for Subscription to "\\$KV.outbox-express.>"'):
            conn.check_subscriptions()
        conn.close()

        reader = client.NatsConnection.connect(server.url, credentials=client.Credentials(nkey_seed_file=str(seed)))
        reader.subscribe("$KV.outbox-express.>", lambda msg: None)
        reader.check_subscriptions()
        reader.close()
        with pytest.raises(client.NatsError, match="does not hold an NKEY seed"):
            client.NatsConnection.connect(server.url, credentials=client.Credentials(nkey_seed_file=str(config)))
