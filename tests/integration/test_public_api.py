"""`import ebbtide` as an application uses it (issue 28): a curated surface, nothing loaded or changed at
import, and functions run in the application's own event loop on a connection it passes in."""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import sys

import msgspec
import nats
import pytest

import ebbtide
from ebbtide.broker import EmbeddedNats
from ebbtide.manifest import LoadedManifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import wait_until


def test_the_surface_is_curated_typed_and_documented() -> None:
    assert len(ebbtide.__all__) == len(set(ebbtide.__all__))
    for name in ebbtide.__all__:
        value = getattr(ebbtide, name)
        assert value.__doc__, f"ebbtide.{name} has no docstring (the API reference is made from them)"
    assert set(ebbtide.__all__) <= set(dir(ebbtide))
    assert importlib.resources.files("ebbtide").joinpath("py.typed").is_file()


def test_importing_ebbtide_loads_no_runtime() -> None:
    """No NATS client, Wasm runtime or toolchain at import: each comes with the first name that needs it."""
    probe = (
        "import json, sys, ebbtide; before = set(sys.modules); internal = hasattr(ebbtide, 'pool'); "
        "ebbtide.load_manifest; print(json.dumps([sorted(before), sorted(set(sys.modules)), internal]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    at_import, after_manifest, internal_visible = json.loads(done.stdout)
    at_import, after_manifest = set(at_import), set(after_manifest)
    assert not internal_visible  # internal modules are no attributes of the package
    heavy = ("nats", "wasmtime", "uvloop", "msgspec", "opentelemetry", "ziglang", "ebbtide.host")
    assert not {m for m in at_import if m.split(".")[0] in heavy or m in heavy}
    assert "ebbtide.manifest" in after_manifest and "wasmtime" not in after_manifest


async def test_functions_run_in_the_applications_loop_on_its_own_connection(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats
) -> None:
    """A plain nats-py client of the application's: provisioned through it, the pipeline runs on it, and
    when the host stops the connection is still open with only the application's own subscriptions."""
    nc = await nats.connect(nats_server.url)
    own = await nc.subscribe("app.own")
    orders = generate_orders(50, seed=11)
    await ebbtide.provision(nc, reference_manifest)
    subscriptions_before = set(nc._subs)  # the application's, and nats-py's inbox for its requests
    js = nc.jetstream()
    async with ebbtide.Host(reference_manifest, connection=nc, metrics_port=0) as host:
        assert host.nc is nc
        for order in orders:
            await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})

        async def all_stored() -> bool:
            stored = 0
            for bucket in ("outbox-express", "outbox-standard"):
                stored += (await (await js.key_value(bucket)).status()).values
            return stored == len(orders)

        await wait_until(all_stored, timeout=60)
    assert nc.is_connected and set(nc._subs) == subscriptions_before
    sample = orders[0]
    kv = await js.key_value(f"outbox-{sample.delivery.lower()}")
    assert msgspec.json.decode((await kv.get(str(sample.order_id))).value)["orderId"] == sample.order_id
    await own.unsubscribe()
    await nc.drain()


def test_a_host_needs_one_way_to_reach_nats(reference_manifest: LoadedManifest) -> None:
    with pytest.raises(ebbtide.UsageError, match="either a NATS URL"):
        ebbtide.Host(reference_manifest)
