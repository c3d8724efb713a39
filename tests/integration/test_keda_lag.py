"""What KEDA sees: its `nats-jetstream` scaler's reading of the monitoring endpoint, done the same way here.

The scaler (kedacore/keda, pkg/scalers/nats_jetstream_scaler.go) asks the endpoint of its trigger
(`natsServerMonitoringEndpoint`) for `/jsz?acc=<account>&consumers=true&config=true`, finds the account,
the stream and the consumer, and notes the consumer's leader (`cluster.leader`). On a cluster
(`meta_cluster.cluster_size` > 1) it then looks for the leader's node: for each client URL the endpoint's
`/varz` advertises (`connect_urls`; else the route URLs of `cluster.urls`), it reads `/varz` at that host
and the endpoint's port and takes `server_name`, and reads that node's `/jsz` the same way; it keeps the
numbers of the node whose name is the consumer's leader (and reads that node directly until the leader
changes). Lag = `num_pending + num_ack_pending`; the trigger is active while lag > activationLagThreshold.

The cluster is the one deploy/kubernetes configures: nats.conf as the StatefulSet mounts it (server_name
from POD_NAME, cluster routes, JetStream, the generated users), three nodes, each on a loopback address of
its own with the same ports (as pods), R3 streams from deploy/kubernetes/ebbtide.toml. The account, stream
and consumer are read from the ScaledObjects of deploy/kubernetes/alternatives/keda-jsz-scaledobjects.yaml,
the alternative to `ebbtide scaler` (whose own test is test_keda_scaler.py).

Followers' own numbers are stale (keda#7322): a follower reports `num_pending` 0 however much is waiting
(only the leader counts what it has not delivered yet; followers see the deliveries, `num_ack_pending`).
Read directly, a follower would never wake a function at zero replicas. The scaler does not use them: it
finds the leader as above, whichever node the headless service answers from. The test shows both.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import connect, provision
from ebbtide.broker.users import AuthBundle
from ebbtide.build import PREBUILT_ENV
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import wait_until
from tests.deploy_support import entrypoints, kustomize
from tests.deploy_support.entrypoints import ConfiguredCluster
from tests.integration.test_deploy_config import K8S_AUTH_COMMAND, KUBERNETES, jsz_scaled_objects, nats_view, of_kind

NODE_HOSTS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]  # one loopback address per pod
BURST = 3000


@dataclass(frozen=True)
class Trigger:
    """A ScaledObject's nats-jetstream trigger, as shipped."""

    function: str
    account: str
    stream: str
    consumer: str
    activation_lag_threshold: int
    polling_interval_s: float


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return json.loads(reply.read())


def jsz_url(host_port: str, account: str) -> str:
    query = urllib.parse.urlencode({"acc": account, "consumers": "true", "config": "true"})
    return f"http://{host_port}/jsz?{query}"


def consumer_detail(jsz: dict[str, Any], trigger: Trigger) -> dict[str, Any] | None:
    for account in jsz.get("account_details") or []:
        if trigger.account in (account.get("id"), account.get("name")):
            for stream in account.get("stream_detail") or []:
                if stream.get("name") == trigger.stream:
                    for consumer in stream.get("consumer_detail") or []:
                        if consumer.get("name") == trigger.consumer:
                            return consumer
    return None


def lag_of(consumer: dict[str, Any]) -> int:
    return int(consumer.get("num_pending", 0)) + int(consumer.get("num_ack_pending", 0))


@dataclass(frozen=True)
class KedaReading:
    lag: int  # what the scaler reports
    leader: str  # the node it took the numbers from
    active: bool  # lag > activationLagThreshold


def keda_reading(endpoint: str, trigger: Trigger) -> KedaReading:
    """The scaler's reading through `endpoint` (host:port, the node the service answered from), uncached."""
    jsz = _get(jsz_url(endpoint, trigger.account))
    consumer = consumer_detail(jsz, trigger)
    if consumer is None:
        raise AssertionError(f"consumer {trigger.consumer} of stream {trigger.stream} not found at {endpoint}")
    leader = (consumer.get("cluster") or {}).get("leader", "")
    if (jsz.get("meta_cluster") or {}).get("cluster_size", 0) <= 1:
        return KedaReading(lag_of(consumer), leader, lag_of(consumer) > trigger.activation_lag_threshold)
    port = endpoint.rsplit(":", 1)[1]
    varz = _get(f"http://{endpoint}/varz")
    advertised = varz.get("connect_urls") or []
    assert advertised, "the nodes advertise their client URLs (KEDA's first way to find them)"
    for client_url in advertised:
        host = client_url.split(":")[0]
        node = _get(f"http://{host}:{port}/varz")["server_name"]
        detail = consumer_detail(_get(jsz_url(f"{host}:{port}", trigger.account)), trigger)
        if detail is not None and node == (detail.get("cluster") or {}).get("leader"):
            return KedaReading(lag_of(detail), node, lag_of(detail) > trigger.activation_lag_threshold)
    raise AssertionError(f"leader node not found for consumer {trigger.consumer}")  # the scaler's error too


def own_lag(endpoint: str, trigger: Trigger) -> int:
    """A node's own numbers for the consumer, as a scaler that did not look for the leader would take them."""
    consumer = consumer_detail(_get(jsz_url(endpoint, trigger.account)), trigger)
    assert consumer is not None, endpoint
    return lag_of(consumer)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """deploy/kubernetes copied with the credentials its documented command generates, and its objects."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(KUBERNETES, root / "deploy" / "kubernetes", ignore=shutil.ignore_patterns("auth"))
    done = subprocess.run(entrypoints.local_command(K8S_AUTH_COMMAND), cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = root / "deploy" / "kubernetes"
    return folder, kustomize.render(folder)


def shipped_triggers(objects: list[dict[str, Any]]) -> dict[str, Trigger]:
    triggers = {}
    for name, scaled in of_kind(objects, "ScaledObject").items():
        [trigger] = [t for t in scaled["spec"]["triggers"] if t["type"] == "nats-jetstream"]
        meta = trigger["metadata"]
        triggers[name] = Trigger(
            name,
            meta["account"],
            meta["stream"],
            meta["consumer"],
            int(meta.get("activationLagThreshold", "0")),
            float(scaled["spec"].get("pollingInterval", 30)),
        )
    return triggers


async def test_keda_reads_the_backlog_on_every_node_of_the_kubernetes_cluster(
    tmp_path: Path,
    deployed: tuple[Path, list[dict[str, Any]]],
    reference_manifest: LoadedManifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, objects = deployed
    [namespace] = of_kind(objects, "Namespace")
    triggers = shipped_triggers(list(jsz_scaled_objects(namespace).values()))  # the alternative to `ebbtide scaler`
    # The functions run as the image runs them: the ConfigMap's manifest beside the built modules.
    app = entrypoints.image_root(tmp_path / "app", (folder / "ebbtide.toml").read_text(), reference_manifest.build_dir / "wasm")
    monkeypatch.setenv(PREBUILT_ENV, "1")
    manifest = load_manifest(app / "ebbtide.toml")
    assert set(triggers) == set(manifest.spec.functions)
    assert all(t.activation_lag_threshold == 0 for t in triggers.values()), "any message wakes a function at zero"
    nodes = of_kind(objects, "StatefulSet")["nats"]["spec"]["replicas"]
    view, args = nats_view(objects, tmp_path / "nats-pod")
    cluster = ConfiguredCluster(
        Path(view.local(args[args.index("--config") + 1])), tmp_path / "cluster", nodes, hosts=NODE_HOSTS[:nodes]
    ).start()
    endpoints = [f"{host}:{port}" for host, port in zip(cluster.hosts, cluster.monitor_ports)]
    operator = AuthBundle(folder / "auth")
    try:
        await wait_until(lambda: asyncio.to_thread(cluster.ready), timeout=60, interval=0.2)
        admin = await connect(",".join(cluster.urls), "keda-test", give_up_after_s=10, auth=operator.admin())
        try:
            await _run(admin, manifest, operator, cluster, endpoints, triggers)
        finally:
            await admin.drain()
    finally:
        cluster.stop()


async def _run(
    admin: NatsClient,
    manifest: LoadedManifest,
    operator: AuthBundle,
    cluster: ConfiguredCluster,
    endpoints: list[str],
    triggers: dict[str, Trigger],
) -> None:
    js = admin.jetstream()

    async def provisioned() -> bool:
        try:
            await provision(js, manifest)
            return True
        except Exception:
            return False

    await wait_until(provisioned, timeout=60, interval=0.5)
    assert (await js.stream_info("ORDERS")).config.num_replicas == len(endpoints)

    async def backlog(trigger: Trigger) -> int:  # the consumer's lag from its leader, through the JetStream API
        info = await js.consumer_info(trigger.stream, trigger.consumer)
        return info.num_pending + info.num_ack_pending

    async def readings(trigger: Trigger) -> tuple[list[KedaReading], dict[str, int]]:
        """The scaler's reading through each node as the endpoint, and each node's own numbers."""
        keda = [await asyncio.to_thread(keda_reading, e, trigger) for e in endpoints]
        own = {e: await asyncio.to_thread(own_lag, e, trigger) for e in endpoints}
        return keda, own

    async def settled_lag(trigger: Trigger, expected: int) -> dict[str, int]:
        """Once the backlog is `expected` and steady: KEDA reads exactly it through every node; each node's own."""

        async def reached() -> bool:  # a message counts on the consumer's leader once it applied it, just after the PubAck
            return await backlog(trigger) == expected

        await wait_until(reached, timeout=10)
        keda, own = await readings(trigger)
        assert {r.lag for r in keda} == {expected}, (trigger.consumer, keda)
        assert len({r.leader for r in keda}) == 1, keda  # every node leads the scaler to the same leader
        assert all(r.active == (expected > 0) for r in keda)
        names = {e: (await asyncio.to_thread(_get, f"http://{e}/varz"))["server_name"] for e in endpoints}
        leader = next(e for e in endpoints if names[e] == keda[0].leader)
        assert own[leader] == expected, (leader, own)  # the leader's own numbers are the backlog
        return own

    report: list[str] = []
    ingress = await connect(",".join(cluster.urls), "keda-test-ingress", give_up_after_s=10, auth=operator.ingress())
    try:
        # Nothing waiting: every reading 0, inactive.
        for trigger in triggers.values():
            await settled_lag(trigger, 0)

        # A burst, with every function at zero replicas: the distributor's lag is the burst.
        orders = generate_orders(BURST, seed=17)
        for order in orders:
            await ingress.jetstream().publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        distributor = triggers["distributor"]
        own = await settled_lag(distributor, BURST)
        report.append(f"burst of {BURST}, nothing running: distributor, own numbers per node {own}")
        stale = [e for e, lag in own.items() if lag != BURST]
        # What a scaler reading a stale follower alone would do: see no lag and leave the function at zero.
        report.append(
            f"stale followers (num_pending not kept off the leader, keda#7322): {stale}: read alone, they "
            "would give lag 0, inactive, the function left at zero; the scaler reads the leader it finds "
            "through /varz instead, so it scales on the real backlog"
        )

        # The distributor drains the burst; the receivers are still at zero: their lag is what it routed to them.
        async with FunctionHosts(manifest, cluster, operator, ["distributor"]):
            drained: list[int] = []

            async def read_while_draining() -> bool:
                before = await backlog(distributor)
                keda = await asyncio.to_thread(keda_reading, endpoints[len(drained) % len(endpoints)], distributor)
                after = await backlog(distributor)
                assert after <= keda.lag <= before, (before, keda, after)  # the backlog at the moment it read
                drained.append(keda.lag)
                return keda.lag == 0 and after == 0

            await wait_until(read_while_draining, timeout=120, interval=0.05)
            report.append(f"distributor draining, KEDA's readings: {drained[:3]} ... {drained[-3:]} ({len(drained)} readings)")
        await settled_lag(distributor, 0)
        express = sum(1 for o in orders if o.delivery.lower() == "express")
        for name, routed in (("receiver-express", express), ("receiver-standard", BURST - express)):
            own = await settled_lag(triggers[name], routed)
            report.append(f"{name}: {routed} routed, own numbers per node {own}")

        # The receivers drain theirs: every reading back to 0 on every node, followers included.
        receivers = ["receiver-express", "receiver-standard"]
        async with FunctionHosts(manifest, cluster, operator, receivers):
            await wait_until(lambda: _all_zero(js, [triggers[r] for r in receivers]), timeout=120, interval=0.1)
        for trigger in triggers.values():
            await settled_lag(trigger, 0)

            async def followers_caught_up() -> bool:
                return all(lag == 0 for lag in (await readings(trigger))[1].values())

            await wait_until(followers_caught_up, timeout=10, interval=0.05)
        report.append("after: 0 through every node and on every node's own numbers, for every consumer")

        # Activation: one message to a function at zero replicas makes the trigger active within one polling
        # interval, whichever node the scaler asks (it may poll at any moment after the message).
        for trigger in triggers.values():
            subject = manifest.function(trigger.function).trigger
            sender = ingress if subject == INGRESS_SUBJECT else admin
            ack = await sender.jetstream().publish(
                subject, encode_order(orders[0]), headers={"Nats-Msg-Id": f"activation-{trigger.function}"}
            )
            assert not ack.duplicate
            published = time.monotonic()
            active_after: dict[str, float] = {}

            async def active_through_every_node() -> bool:
                for endpoint in endpoints:
                    if endpoint not in active_after:
                        reading = await asyncio.to_thread(keda_reading, endpoint, trigger)
                        assert reading.lag <= 1, reading
                        if reading.active:
                            active_after[endpoint] = time.monotonic() - published
                return len(active_after) == len(endpoints)

            await wait_until(active_through_every_node, timeout=trigger.polling_interval_s, interval=0.01)
            seen_own: dict[str, float] = {}

            async def every_node_sees_it() -> bool:
                for endpoint, lag in (await readings(trigger))[1].items():
                    if lag > 0:
                        seen_own.setdefault(endpoint, time.monotonic() - published)
                return len(seen_own) == len(endpoints)

            try:
                await wait_until(every_node_sees_it, timeout=trigger.polling_interval_s, interval=0.05)
                what = {e: f"{s * 1000:.0f} ms" for e, s in seen_own.items()}
            except AssertionError:
                what = {
                    e: (f"{seen_own[e] * 1000:.0f} ms" if e in seen_own else f"not within {trigger.polling_interval_s:g} s")
                    for e in endpoints
                }
            report.append(
                f"activation of {trigger.function}: KEDA lag 1, active after at most "
                f"{max(active_after.values()) * 1000:.0f} ms through every node (polling interval "
                f"{trigger.polling_interval_s:g} s); own numbers show it after {what}"
            )
    finally:
        await ingress.drain()
        print("\n" + "\n".join(report))


class FunctionHosts:
    """Each of `functions` in a Host of its own, with its own NATS user (as its Deployment runs it)."""

    def __init__(self, manifest: LoadedManifest, cluster: ConfiguredCluster, operator: AuthBundle, functions: list[str]) -> None:
        self.hosts = [Host(manifest, ",".join(cluster.urls), [f], auth=operator.function(f)) for f in functions]

    async def __aenter__(self) -> FunctionHosts:
        for host in self.hosts:
            await host.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for host in self.hosts:
            await host.__aexit__(None, None, None)


async def _all_zero(js, triggers: list[Trigger]) -> bool:  # type: ignore[no-untyped-def]
    for trigger in triggers:
        info = await js.consumer_info(trigger.stream, trigger.consumer)
        if info.num_pending + info.num_ack_pending:
            return False
    return True
