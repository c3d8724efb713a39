"""What KEDA sees: its `nats-jetstream` scaler's reading of the monitoring endpoint, done the same way here.

The scaler (kedacore/keda, pkg/scalers/nats_jetstream_scaler.go) asks the endpoint of its trigger
(`natsServerMonitoringEndpoint`) for `/jsz?acc=<account>&consumers=true&config=true`, finds the account,
the stream and the consumer, and notes the consumer's leader (`cluster.leader`). On a cluster
(`meta_cluster.cluster_size` > 1) it then looks for the leader's node: for each client URL the endpoint's
`/varz` advertises (`connect_urls`; else the route URLs of `cluster.urls`), it reads `/varz` at that host
and the endpoint's port and takes `server_name`, and reads that node's `/jsz` the same way; it keeps the
numbers of the node whose name is the consumer's leader. It caches that node's address and the leader's
name: later polls read the cached node first and keep its numbers while it still names the same leader;
after a leader change it names another, and the scaler looks the leader up again (KedaScaler below). A poll
that errs is retried once on a fresh scaler (KEDA's scalers cache). Lag = `num_pending + num_ack_pending`;
the trigger is active while lag > activationLagThreshold.

The cluster is the one deploy/kubernetes configures: nats.conf as the StatefulSet mounts it (server_name
from POD_NAME, cluster routes, JetStream, the generated users), three nodes, each on a loopback address of
its own with the same ports (as pods), R3 streams from deploy/kubernetes/ebbtide.toml. The account, stream
and consumer are read from the ScaledObjects of deploy/kubernetes/alternatives/keda-jsz-scaledobjects.yaml,
the alternative to `ebbtide scaler` (whose own test is test_keda_scaler.py).

Followers' own numbers are stale (keda#7322): a follower reports `num_pending` 0 however much is waiting
(only the leader counts what it has not delivered yet; followers see the deliveries, `num_ack_pending`).
Read directly, a follower would never wake a function at zero replicas. The scaler does not use them: it
finds the leader as above, whichever node the headless service answers from, and again after the
consumer's leader changes (tested with a leader stepdown under a backlog). The test shows both.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
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
    asked: tuple[str, ...] = ()  # the monitoring URLs this poll requested, in order


class ScalerError(Exception):
    """What the scaler returns as an error for a poll ("leader node not found for consumer ...")."""


class KedaScaler:
    """One trigger's scaler as KEDA keeps it between polls (pkg/scalers/nats_jetstream_scaler.go,
    getNATSJetstreamMonitoringData): it caches the consumer's leader name and that node's /jsz URL.

    A poll reads the cached node first (the endpoint, before anything is cached). If that node still names
    the cached leader as the consumer's leader, its numbers are taken as they are. Otherwise (first poll, or
    the leader changed: the cached node, now a follower, names another leader), on a cluster it finds the
    leader again: every client URL the endpoint's /varz advertises, /varz there for the node's name, and
    that node's /jsz, until the node named leader; it caches that one. No node naming itself leader (an
    election in progress) is an error for that poll."""

    def __init__(self, endpoint: str, trigger: Trigger) -> None:
        self.endpoint = endpoint  # host:port of natsServerMonitoringEndpoint (the service)
        self.trigger = trigger
        self.consumer_leader = ""
        self.leader_url = ""  # the cached leader's /jsz URL
        self.cluster_size = 0
        self.detail: dict[str, Any] | None = None  # the consumer's numbers the lag is taken from
        self.source = ""

    def _keep(self, jsz: dict[str, Any], url: str, leader_url: str = "") -> bool:
        """setNATSJetStreamMonitoringData: the cluster size, the consumer's numbers and its leader's name."""
        self.cluster_size = int((jsz.get("meta_cluster") or {}).get("cluster_size", 0))
        consumer = consumer_detail(jsz, self.trigger)
        if consumer is None:
            return False
        self.detail, self.source = consumer, url
        self.consumer_leader = (consumer.get("cluster") or {}).get("leader", "")
        if leader_url:
            self.leader_url = leader_url
        return True

    def poll(self) -> KedaReading:
        asked: list[str] = []

        def get(url: str) -> dict[str, Any]:
            asked.append(url)
            return _get(url)

        cached = self.consumer_leader
        url = self.leader_url or jsz_url(self.endpoint, self.trigger.account)
        found = self._keep(get(url), url)
        if cached and not found:
            self.consumer_leader = self.leader_url = ""
            self.detail = None
        if not (found and cached and cached == self.consumer_leader) and self.cluster_size > 1:
            self._find_leader(get)
        if self.detail is None:
            raise ScalerError("stream or consumer not found")
        lag = lag_of(self.detail)
        return KedaReading(lag, self.consumer_leader, lag > self.trigger.activation_lag_threshold, tuple(asked))

    def _find_leader(self, get: Any) -> None:
        host, port = self.endpoint.rsplit(":", 1)
        advertised = get(f"http://{self.endpoint}/varz").get("connect_urls") or []
        assert advertised, "the nodes advertise their client URLs (KEDA's first way to find them)"
        for client_url in advertised:
            node_host = client_url.split(":")[0]
            node = get(f"http://{node_host}:{port}/varz")["server_name"]
            node_url = jsz_url(f"{node_host}:{port}", self.trigger.account)
            jsz = get(node_url)
            detail = consumer_detail(jsz, self.trigger)
            if detail is not None and node == (detail.get("cluster") or {}).get("leader"):
                self._keep(jsz, node_url, leader_url=node_url)
                return
        raise ScalerError(f"leader node not found for consumer {self.trigger.consumer}")


class KedaTrigger:
    """The scaler as KEDA's scalers cache runs it (pkg/scaling/cache/scalers_cache.go): a poll that fails is
    tried once more on a scaler built afresh (nothing cached); a second failure is the poll's error."""

    def __init__(self, endpoint: str, trigger: Trigger) -> None:
        self.endpoint, self.trigger = endpoint, trigger
        self.scaler = KedaScaler(endpoint, trigger)
        self.errors: list[str] = []

    def poll(self) -> KedaReading:
        try:
            return self.scaler.poll()
        except (ScalerError, OSError) as first:
            self.errors.append(repr(first))
            self.scaler = KedaScaler(self.endpoint, self.trigger)
            return self.scaler.poll()


def keda_reading(endpoint: str, trigger: Trigger) -> KedaReading:
    """The scaler's reading through `endpoint` (host:port, the node the service answered from), uncached:
    a scaler's first poll."""
    return KedaScaler(endpoint, trigger).poll()


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

        # A consumer leader change under the backlog (a node restarted, an operator's stepdown): KEDA's cached
        # leader address now points at a follower, whose own numbers may be stale. See KedaScaler.
        report.append(await leader_change(admin, distributor, endpoints, BURST))

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

        # Activation: one message to a function at zero replicas makes the trigger active at the scaler's next
        # poll, whichever node it asks: once the consumer's leader counts the message (the JetStream API reads
        # the leader), a reading through every node is active and counts exactly it. No clock is involved:
        # KEDA polls every pollingInterval, and what must hold is that the poll after the message sees it.
        for trigger in triggers.values():
            subject = manifest.function(trigger.function).trigger
            sender = ingress if subject == INGRESS_SUBJECT else admin
            ack = await sender.jetstream().publish(
                subject, encode_order(orders[0]), headers={"Nats-Msg-Id": f"activation-{trigger.function}"}
            )
            assert not ack.duplicate

            async def leader_counts_it() -> bool:
                return await backlog(trigger) == 1  # noqa: B023 (awaited in this iteration)

            await wait_until(leader_counts_it, timeout=10)
            keda = [await asyncio.to_thread(keda_reading, e, trigger) for e in endpoints]
            assert all(r.active and r.lag == 1 for r in keda), (trigger.function, keda)
            followers_behind = {e: lag for e, lag in (await readings(trigger))[1].items() if lag == 0}
            report.append(
                f"activation of {trigger.function}: once its leader counts the message, KEDA reads lag 1, active, "
                f"through each of {len(endpoints)} nodes; nodes whose own numbers did not show it yet: {followers_behind or 'none'}"
            )
    finally:
        await ingress.drain()
        print("\n" + "\n".join(report))


async def leader_change(admin: NatsClient, trigger: Trigger, endpoints: list[str], waiting: int) -> str:
    """The consumer's leader steps down while `waiting` messages wait and nothing runs. A scaler per node
    (each with the leader cached from a poll before) polls again: its cached node is now a follower, which
    names the new leader, so the scaler finds that leader again and reads the whole backlog; a poll during
    the election may fail ("leader node not found"), and KEDA's retry on a fresh scaler reads it too.
    What a scaler that trusted its cached address without checking the leader's name would read: the
    follower's own numbers, shown in the report (keda#7322: a follower's num_pending is stale)."""
    js = admin.jetstream()
    scalers = [KedaTrigger(endpoint, trigger) for endpoint in endpoints]
    before = [await asyncio.to_thread(s.poll) for s in scalers]
    old_leader = before[0].leader
    assert {r.leader for r in before} == {old_leader} and {r.lag for r in before} == {waiting}, before
    old_url = scalers[0].scaler.leader_url
    assert all(s.scaler.leader_url == old_url for s in scalers), "every scaler caches the leader's address"

    answer = json.loads(
        (await admin.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{trigger.stream}.{trigger.consumer}", b"", timeout=10)).data
    )
    assert answer.get("success") is True, answer

    async def new_leader() -> bool:
        try:
            info = await js.consumer_info(trigger.stream, trigger.consumer, timeout=1)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            return False  # no leader answers during the election, or JetStream says it is not available yet (503)
        return info.cluster is not None and info.cluster.leader not in (None, "", old_leader)

    await wait_until(new_leader, timeout=30, interval=0.05)
    leader = (await js.consumer_info(trigger.stream, trigger.consumer)).cluster.leader  # type: ignore[union-attr]
    stale_at_old = own_lag(old_url.removeprefix("http://").split("/", 1)[0], trigger)

    after: list[KedaReading] = []

    async def every_scaler_read() -> bool:
        try:
            for scaler in scalers[len(after) :]:
                after.append(await asyncio.to_thread(scaler.poll))
        except (ScalerError, OSError):
            return False  # an election outlasting KEDA's retry too: that poll's error; KEDA polls again
        return True

    await wait_until(every_scaler_read, timeout=30, interval=0.2)
    for reading in after:
        assert reading.asked[0] == old_url, reading  # the poll began at the cached address, as KEDA's does
        assert (reading.leader, reading.lag, reading.active) == (leader, waiting, True), (leader, reading)
    errors = sum(len(s.errors) for s in scalers)
    return (
        f"consumer leader change {old_leader} -> {leader} with {waiting} waiting: each cached scaler asked the old "
        f"leader first, found {leader} named there and read lag {waiting} from it ({errors} poll(s) failed during the "
        f"election and were retried on a fresh scaler); the old leader's own numbers, read alone: lag {stale_at_old}"
    )


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
