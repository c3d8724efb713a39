"""`ebbtide scaler`, KEDA's external scaler, on a real 3-node cluster, spoken to as KEDA speaks to it.

The cluster is deploy/kubernetes's (nats.conf as the StatefulSet mounts it, the generated users, three nodes on
loopback addresses of their own, R3 streams). The scaler runs as its Deployment is written (command,
environment, its mounted seed and the ConfigMap's manifest; only addresses are local), one process per NATS
node, each given that node alone. The client is KEDA's side of externalscaler.proto: protobuf's classes and
gRPC stubs generated from the .proto into a temporary folder (tests/keda_proto.py), independent of the
scaler's own codec. Checked:

- the metric and target of each function (GetMetricSpec: the manifest's target_backlog x max);
- the lag equals the backlog (consumer info as the admin reads it) through every node, during a burst, while
  a function drains it, after two leader moves of the consumer, and at 0 after;
- credentials refused where they should be: a scaler with a key the server does not know never connects
  (exit 1); a scaler given a function's user reads that function and nothing else (a function's user cannot
  act as the scaler: the server refuses the other consumers' info, the RPC answers UNAVAILABLE, /readyz 503);
- activation pushed on the bell: StreamIsActive answers `false` for a drained function, then `true` after one
  publish, counted as a bell activation with no lag read in between; the delay is printed (not asserted: the
  machine is shared).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import nkeys
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import connect, provision
from ebbtide.broker.users import AuthBundle
from ebbtide.build import PREBUILT_ENV
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import wait_until
from tests.deploy_support import entrypoints, mounts
from tests.deploy_support.entrypoints import ConfiguredCluster, Launch
from tests.deploy_support.mounts import ContainerView
from tests.integration.test_deploy_config import SCALER_DEPLOYMENT, container, env_of, nats_view, of_kind
from tests.integration.test_keda_lag import NODE_HOSTS, FunctionHosts, deployed  # noqa: F401 (deployed: the fixture)
from tests.keda_proto import KedaProto, keda_proto_fixture  # noqa: F401 (the fixture keda_proto)

BURST = 2000


class Keda:
    """KEDA's gRPC client to one scaler: the four RPCs for a function, as its ScaledObject's trigger asks."""

    def __init__(self, proto: KedaProto, address: str) -> None:
        self.pb = proto.messages
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = proto.services.ExternalScalerStub(self.channel)

    def ref(self, function: str) -> Any:
        return self.pb.ScaledObjectRef(name=function, namespace="ebbtide", scalerMetadata={"function": function})

    async def metric_spec(self, function: str) -> tuple[str, int, float]:
        [spec] = (await self.stub.GetMetricSpec(self.ref(function), timeout=10)).metricSpecs
        return spec.metricName, spec.targetSize, spec.targetSizeFloat

    async def lag(self, function: str) -> int:
        name = (await self.metric_spec(function))[0]
        request = self.pb.GetMetricsRequest(scaledObjectRef=self.ref(function), metricName=name)
        [value] = (await self.stub.GetMetrics(request, timeout=10)).metricValues
        assert value.metricValue == value.metricValueFloat, value
        return int(value.metricValue)

    async def active(self, function: str) -> bool:
        return bool((await self.stub.IsActive(self.ref(function), timeout=10)).result)

    def stream(self, function: str) -> Any:
        return self.stub.StreamIsActive(self.ref(function))

    async def close(self) -> None:
        await self.channel.close()


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        text = reply.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M) if not m.group(1).startswith("#")}


def scaler_launch(
    k8s: list[dict[str, Any]], root: Path, label: str, url: str, env_override: dict[str, str] | None = None
) -> tuple[Launch, int]:
    """The scaler's Deployment as written: its command and environment, its mounts (the Secret's seed, the
    ConfigMap's manifest) laid out locally; the NATS URL, the gRPC and metrics addresses made local."""
    deployment = of_kind(k8s, "Deployment")[SCALER_DEPLOYMENT]
    pod, spec = deployment["spec"]["template"]["spec"], container(deployment)
    view = ContainerView(root / label / "view")
    mounts.pod_mounts(view, pod, spec, k8s, root / label / "volumes")
    grpc_port, metrics_port = entrypoints.free_port(), entrypoints.free_port()
    command = list(spec["command"])
    listen = command.index("--listen") + 1
    assert command[listen].startswith("0.0.0.0:")
    command[listen] = f"127.0.0.1:{grpc_port}"
    env = env_of(deployment) | {
        "EBBTIDE_NATS_URL": url,
        "EBBTIDE_METRICS_PORT": str(metrics_port),
        "EBBTIDE_METRICS_HOST": "127.0.0.1",
    }
    env = {key: view.local(value) for key, value in env.items()} | (env_override or {})
    return Launch(label, command, env, metrics_port), grpc_port


async def test_the_scaler_on_a_three_node_cluster(
    tmp_path: Path,
    deployed: tuple[Path, list[dict[str, Any]]],  # noqa: F811
    keda_proto: KedaProto,
    reference_manifest: LoadedManifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, k8s = deployed
    config_map = next(cm for n, cm in of_kind(k8s, "ConfigMap").items() if n.startswith("ebbtide-manifest-"))
    app = entrypoints.image_root(tmp_path / "app", config_map["data"]["ebbtide.toml"], reference_manifest.build_dir / "wasm")
    monkeypatch.setenv(PREBUILT_ENV, "1")
    manifest = load_manifest(app / "ebbtide.toml")
    view, args = nats_view(k8s, tmp_path / "nats-pod")
    cluster = ConfiguredCluster(
        Path(view.local(args[args.index("--config") + 1])), tmp_path / "cluster", 3, hosts=NODE_HOSTS
    ).start()
    operator = AuthBundle(folder / "auth")
    launches: list[Launch] = []
    clients: list[Keda] = []
    report: list[str] = []
    try:
        await wait_until(lambda: asyncio.to_thread(cluster.ready), timeout=60, interval=0.2)
        admin = await connect(",".join(cluster.urls), "scaler-test", give_up_after_s=10, auth=operator.admin())
        try:

            async def provisioned() -> bool:
                try:
                    await provision(admin.jetstream(), manifest)
                    return True
                except Exception:
                    return False

            await wait_until(provisioned, timeout=60, interval=0.5)
            # One scaler per node, each given that node alone, as its Deployment runs it.
            ports = []
            for node, url in enumerate(cluster.urls):
                launch, port = scaler_launch(k8s, tmp_path / "pods", f"scaler-via-nats-{node}", url)
                launches.append(launch)
                ports.append(port)
                entrypoints.start(launch, app, tmp_path)
            for launch in launches:
                await entrypoints.wait_ready(launch)
            clients = [Keda(keda_proto, f"127.0.0.1:{port}") for port in ports]
            await _run(admin, manifest, operator, cluster, launches, clients, report)
            await _refused(admin, k8s, app, tmp_path, cluster, operator, keda_proto, report)
        finally:
            await admin.drain()
    finally:
        for client in clients:
            await client.close()
        codes = await asyncio.to_thread(entrypoints.stop_all, launches)
        cluster.stop()
        print("\n" + "\n".join(report))
    assert codes == {launch.label: 0 for launch in launches}, [launch.log_tail() for launch in launches]


async def _run(
    admin: NatsClient,
    manifest: LoadedManifest,
    operator: AuthBundle,
    cluster: ConfiguredCluster,
    launches: list[Launch],
    clients: list[Keda],
    report: list[str],
) -> None:
    js = admin.jetstream()
    functions = list(manifest.spec.functions)

    async def backlog(function: str) -> int:  # from the consumer's leader, as the admin reads it
        info = await js.consumer_info("ORDERS", function)
        return info.num_pending + info.num_ack_pending

    async def every_scaler_reads(function: str, expected: int) -> None:
        async def steady() -> bool:
            return await backlog(function) == expected

        await wait_until(steady, timeout=15)
        lags = [await client.lag(function) for client in clients]
        assert lags == [expected] * len(clients), (function, lags)
        assert [await client.active(function) for client in clients] == [expected > 0] * len(clients)

    for function in functions:
        fn = manifest.function(function)
        for client in clients:
            assert await client.metric_spec(function) == (
                f"ebbtide-lag-{function}",
                fn.scale.target_backlog * fn.scale.max,
                float(fn.scale.target_backlog * fn.scale.max),
            )
        await every_scaler_reads(function, 0)

    # A burst with every function at zero replicas: the distributor's lag is the burst, through every node.
    ingress = await connect(",".join(cluster.urls), "scaler-test-ingress", give_up_after_s=10, auth=operator.ingress())
    try:
        orders = generate_orders(BURST, seed=23)
        for order in orders:
            await ingress.jetstream().publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        await every_scaler_reads("distributor", BURST)
        report.append(f"burst of {BURST}: every scaler (one per node) reads {BURST} for the distributor")

        # Leader moves: the consumer's leader steps down twice; the lag through every node is still the backlog.
        leaders = [(await js.consumer_info("ORDERS", "distributor")).cluster.leader]
        for _ in range(2):
            await admin.request("$JS.API.CONSUMER.LEADER.STEPDOWN.ORDERS.distributor", b"", timeout=5)

            async def moved() -> bool:
                try:
                    leader = (await js.consumer_info("ORDERS", "distributor")).cluster.leader
                except Exception:
                    return False  # no leader for a moment
                return bool(leader) and leader != leaders[-1]

            await wait_until(moved, timeout=30, interval=0.1)
            leaders.append((await js.consumer_info("ORDERS", "distributor")).cluster.leader)
            await every_scaler_reads("distributor", BURST)
        report.append(f"consumer leader moved {' -> '.join(leaders)}: every scaler still reads {BURST}")

        # The distributor drains it: each reading lies between the backlog before and after it.
        async with FunctionHosts(manifest, cluster, operator, ["distributor"]):
            readings: list[int] = []

            async def drained() -> bool:
                before = await backlog("distributor")
                lag = await clients[len(readings) % len(clients)].lag("distributor")
                after = await backlog("distributor")
                assert after <= lag <= before, (before, lag, after)
                readings.append(lag)
                return lag == 0 and after == 0

            await wait_until(drained, timeout=120, interval=0.05)
        report.append(f"distributor draining, the scalers' readings: {readings[:3]} ... {readings[-3:]} ({len(readings)})")
        express = sum(1 for o in orders if o.delivery.lower() == "express")
        await every_scaler_reads("receiver-express", express)
        await every_scaler_reads("receiver-standard", BURST - express)
        async with FunctionHosts(manifest, cluster, operator, ["receiver-express", "receiver-standard"]):
            for function in ("receiver-express", "receiver-standard"):
                await every_scaler_reads(function, 0)
        await every_scaler_reads("distributor", 0)
        report.append(f"receivers: {express} and {BURST - express} read through every node, then 0 once drained")

        # Activation on the bell: the distributor at zero, each scaler's StreamIsActive answers false ...
        streams = [client.stream("distributor") for client in clients]
        for stream in streams:
            assert (await asyncio.wait_for(stream.read(), 10)).result is False
        await wait_until(
            lambda: all(metrics(l.metrics_port)['ebbtide_scaler_active{function="distributor"}'] == 0 for l in launches),
            timeout=10,
        )
        before = [metrics(launch.metrics_port) for launch in launches]
        # ... then one order: each pushes true, from the bell, with no lag read in between.
        pushed_at: list[float] = []
        order = generate_orders(1, seed=29, first_id=900_001)[0]
        published = time.monotonic()
        await ingress.jetstream().publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        for stream in streams:
            assert (await asyncio.wait_for(stream.read(), 10)).result is True
            pushed_at.append(time.monotonic() - published)
        for stream in streams:
            stream.cancel()
        for launch, earlier in zip(launches, before):
            now = metrics(launch.metrics_port)
            bell, poll = (
                'ebbtide_scaler_activations_total{function="distributor",cause="bell"}',
                'ebbtide_scaler_activations_total{function="distributor",cause="poll"}',
            )
            assert now[bell] == earlier[bell] + 1 and now[poll] == earlier[poll], (earlier, now)
        report.append(
            "activation of the distributor at zero pushed on the bell by every scaler, no lag read before it: "
            + ", ".join(f"{s * 1000:.1f} ms" for s in pushed_at)
            + " after the publish (its PubAck included)"
        )
    finally:
        await ingress.drain()


async def _refused(
    admin: NatsClient,
    k8s: list[dict[str, Any]],
    app: Path,
    root: Path,
    cluster: ConfiguredCluster,
    operator: AuthBundle,
    proto: KedaProto,
    report: list[str],
) -> None:
    # A key the server does not know: refused at the first connect, the process exits 1 and says so.
    wrong = root / "wrong.nk"
    wrong.write_text(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode() + "\n")
    wrong.chmod(0o600)
    launch, _ = scaler_launch(
        k8s, root / "pods", "scaler-wrong-key", cluster.urls[0], {"EBBTIDE_NATS_NKEY_SEED_FILE": str(wrong)}
    )
    entrypoints.start(launch, app, root)
    assert launch.process is not None
    assert await asyncio.to_thread(launch.process.wait, 60) == 1, launch.log_tail()
    assert "authorization violation" in launch.log_tail().lower(), launch.log_tail()
    report.append("a key the server does not know: the scaler is refused, exit 1")

    # A function's user as the scaler: its own consumer only; the others' info is refused by the server.
    distributor = operator.function("distributor")
    launch, port = scaler_launch(
        k8s,
        root / "pods",
        "scaler-as-distributor",
        cluster.urls[0],
        {"EBBTIDE_NATS_NKEY_SEED_FILE": distributor.nkey_seed_file, "EBBTIDE_NATS_INBOX_PREFIX": distributor.inbox_prefix},
    )
    entrypoints.start(launch, app, root)
    client = Keda(proto, f"127.0.0.1:{port}")
    try:

        async def serving() -> bool:
            assert launch.process is not None and launch.process.poll() is None, launch.log_tail()
            return await asyncio.to_thread(entrypoints.http_status, f"http://127.0.0.1:{launch.metrics_port}/healthz") == 200

        await wait_until(serving, timeout=60, interval=0.1)
        info = await admin.jetstream().consumer_info("ORDERS", "distributor")
        assert await client.lag("distributor") == info.num_pending + info.num_ack_pending == 1  # its own: the order above
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.lag("receiver-express")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        status = await asyncio.to_thread(entrypoints.http_status, f"http://127.0.0.1:{launch.metrics_port}/readyz")
        assert status == 503
        report.append(f"a function's user as the scaler: its own lag only; another's: {refused.value.code().name}, /readyz 503")
    finally:
        await client.close()
        codes = await asyncio.to_thread(entrypoints.stop_all, [launch])
    assert codes == {launch.label: 0}, launch.log_tail()
