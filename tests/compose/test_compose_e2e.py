"""`docker compose up` for real: the project's images built from the Dockerfile, the whole compose file run
on this machine's Docker engine, driven from the host through the published ports as a user would.

Runs where a Docker engine answers and the images the compose file pulls are present; elsewhere it skips
saying why, and under CI it fails saying why (tests/components.py). CI has no Docker Hub: `.ci/docker-engine` (called by `.ci/run`) starts an engine and makes CI
stand-ins with the compose file's image names (deploy/ci-standins/; Jaeger's is an OTLP recorder).

One project (own name, free host ports) for the module; the tests run in file order and share its
ledger of published orders, so each checks the outboxes against everything published so far:
orders and poison -> exactly once / DLQ; each container's credentials its own; Prometheus targets;
traces read through Jaeger's query API; a receiver replica killed and NATS restarted mid-run; Locust headless (last: its orders are its
own). `docker compose down -v` at the end, always; the images built here are removed unless
EBBTIDE_E2E_KEEP_IMAGES=1 (they are ~1 GB).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import secrets
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from ebbtide.broker import free_port
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, generate_orders
from tests.components import require
from tests.compose.project import ComposeProject, image_ids, remove_images, run, why_not_runnable
from tests.conftest import REPO
from tests.deploy_support import dashboard
from tests.reliability.conftest import (
    PublishStats,
    account,
    dead_letter_accounting,
    expected_outbox,
    finished_run,
    publish_reliably,
    subject_counts,
    with_invalid,
)

COMPOSE_FILE = REPO / "docker-compose.yml"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
# Host ports of docker-compose.yml (variables with the usual defaults): free ones here.
PORT_VARIABLES = (
    "EBBTIDE_NATS_PORT",
    "EBBTIDE_NATS_MONITOR_PORT",
    "EBBTIDE_LOCUST_PORT",
    "EBBTIDE_JAEGER_UI_PORT",
    "EBBTIDE_OTLP_HTTP_PORT",
    "EBBTIDE_PROMETHEUS_PORT",
)
BUILT_IMAGES = ("ebbtide:0.1.0", "ebbtide-loadtest:0.1.0")
ORDERS_PER_PHASE = 2000
BUILD_TIMEOUT_S = 1200  # from a cold cache: pip installs the dependencies and Zig, then builds the modules
READY_TIMEOUT_S = 180

pytestmark = [pytest.mark.timeout(BUILD_TIMEOUT_S + 600)] if importlib.util.find_spec("pytest_timeout") else []


@pytest.fixture(scope="module", autouse=True)
def compose_runnable() -> None:
    """The engine, compose and the images (the CI stand-ins, made by .ci/docker-engine): skipped without
    them on a developer's machine, failed under CI (tests/components.py)."""
    require(why_not_runnable(COMPOSE_FILE), "docker compose end-to-end (a Docker engine, compose, the images)")


@dataclass
class Stack:
    project: ComposeProject
    ports: dict[str, int]
    ingress_url: str  # nats://ingress:PASSWORD@127.0.0.1:PORT
    admin_seed: Path
    orders: list = field(default_factory=list)  # every order the host published, for the outbox ledger
    invalid_ids: set[str] = field(default_factory=set)  # Nats-Msg-Ids of the poison published
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports['EBBTIDE_NATS_PORT']}"

    def http_json(self, port_variable: str, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[port_variable]}{path}", timeout=5) as reply:
            return json.loads(reply.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = {variable: free_port() for variable in PORT_VARIABLES}
    project = ComposeProject(REPO, f"ebbtide-e2e-{secrets.token_hex(4)}", {k: str(v) for k, v in ports.items()})
    timings: dict[str, float] = {}
    images_before = image_ids()
    try:
        started = time.monotonic()
        project.compose("build", timeout=BUILD_TIMEOUT_S)
        timings["build"] = time.monotonic() - started
        started = time.monotonic()
        project.compose("up", "--detach", "--no-build", timeout=READY_TIMEOUT_S)
        project.wait_ready(READY_TIMEOUT_S)
        timings["up until healthy"] = time.monotonic() - started
        # The credentials the one-shot `nats-auth` generated, read as deploy/README.md tells a user.
        ingress = dict(line.split("=", 1) for line in project.read_file("nats-auth", "/auth/ingress.env").split())
        admin_seed = tmp_path_factory.mktemp("auth") / "admin.nk"
        admin_seed.write_text(project.read_file("nats-auth", "/auth/admin.nk"))
        admin_seed.chmod(0o600)
        url = f"nats://{ingress['EBBTIDE_NATS_USER']}:{ingress['EBBTIDE_NATS_PASSWORD']}@127.0.0.1:{ports['EBBTIDE_NATS_PORT']}"
        stack = Stack(project, ports, url, admin_seed, timings=timings)
        yield stack
    finally:
        started = time.monotonic()
        logs = tmp_path_factory.mktemp("compose-logs") / "compose.log"
        logs.write_text(project.logs(tail=200))
        project.down()
        leftovers = project.containers()
        if os.environ.get("EBBTIDE_E2E_KEEP_IMAGES") != "1":
            remove_images(BUILT_IMAGES, images_before)
        timings["down"] = time.monotonic() - started
        print(f"\ncompose e2e timings (s): {', '.join(f'{k} {v:.1f}' for k, v in timings.items())}; logs: {logs}")
        assert not leftovers, f"containers left after down: {leftovers}"


async def connect(url: str, **auth: object) -> NatsClient:
    """Reconnects at once and forever: NATS is restarted under it in one test."""

    async def quiet(_error: Exception) -> None:
        pass

    return await nats.connect(
        url,
        name="compose-e2e",
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=2,
        error_cb=quiet,
        **auth,
    )


async def publish_orders(stack: Stack, seed: int, first_id: int, **options: object) -> PublishStats:
    """Orders and poison (1 %), from the host through the published port as `ingress`; recorded in the ledger."""
    orders = generate_orders(ORDERS_PER_PHASE, seed=seed, first_id=first_id)
    messages, invalid_ids = with_invalid(orders, share=0.01, seed=seed)
    stack.orders += orders
    stack.invalid_ids |= invalid_ids
    ingress = await connect(stack.ingress_url)
    try:
        return await publish_reliably(ingress, INGRESS_SUBJECT, messages, **options)  # type: ignore[arg-type]
    finally:
        await ingress.close()


async def check_ledger(stack: Stack, what: str) -> None:
    """Every order published so far in its outbox exactly once (one write per key in the bucket's
    stream, and no write beyond one per order), every poison message dead-lettered once."""
    admin = await connect(stack.nats_url, nkeys_seed=str(stack.admin_seed))
    try:
        expected = expected_outbox(stack.orders)
        await finished_run(admin, expected, len(stack.invalid_ids), what)
        # The functions keep running: a write still on its way would show up in a later phase's ledger.
        outbox, letters = await account(admin, expected)
        outbox.check()
        assert outbox.extra_writes == 0, outbox.writes
        for bucket, ids in expected.items():
            per_key = await subject_counts(admin, f"KV_{bucket}", f"$KV.{bucket}.>")
            assert per_key == {f"$KV.{bucket}.{order_id}": 1 for order_id in ids}, bucket
        assert dead_letter_accounting(letters, stack.invalid_ids) == (0, 0, 0), "missing, doubled, stray dead letters"
    finally:
        await admin.close()


async def test_orders_from_the_host_stored_exactly_once_and_poison_dead_lettered(stack: Stack) -> None:
    started = time.monotonic()
    await publish_orders(stack, seed=11, first_id=1)
    await check_ledger(stack, "the first orders stored and poison dead-lettered")
    stack.timings["orders"] = time.monotonic() - started


def test_each_container_sees_only_its_own_credentials(stack: Stack) -> None:
    """What the containers of the running project hold at their credentials mount: a function replica its
    own seed and the metrics token, Locust the ingress password and the observer seed, NATS the users (no seed), `provision`
    (finished: a new container of it) the admin seed. The admin seed is nowhere else."""
    project = stack.project

    def listing(container_id: str, folder: str) -> list[str]:
        return sorted(run(["docker", "exec", container_id, "ls", "-A", folder], 30).stdout.split())

    for service in project.function_services():
        for container in project.containers(service):
            assert listing(container.id, "/auth") == sorted([f"{service}.nk", "metrics.token"]), (service, container.id)
    [locust] = project.containers("locust")
    assert listing(locust.id, "/auth") == ["ingress.env", "observer.nk"]
    [nats_server] = project.containers("nats")
    assert listing(nats_server.id, "/etc/nats/auth") == ["server.conf"]
    provision = project.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "ls", "provision", "-A", "/auth", timeout=60)
    assert sorted(provision.stdout.split()) == ["admin.nk"]


async def test_every_function_replica_is_a_healthy_prometheus_target(stack: Stack) -> None:
    """Each replica a target Prometheus scrapes (with the metrics token), `up`; none answers without it."""
    functions = stack.project.function_services()
    replicas = {c.ip: c.service for s in functions for c in stack.project.containers(s)}
    assert len(replicas) == sum(stack.project.expected_replicas(s) for s in functions) >= 5, replicas

    def scraped() -> dict[str, tuple[str, str]]:
        targets = stack.http_json("EBBTIDE_PROMETHEUS_PORT", "/api/v1/targets")["data"]["activeTargets"]
        return {
            t["labels"]["instance"].rsplit(":", 1)[0]: (t["labels"].get("service", ""), t["health"])
            for t in targets
            if t["labels"]["job"] == "ebbtide"
        }

    want = {ip: (service, "up") for ip, service in replicas.items()}
    deadline = time.monotonic() + 90  # DNS discovery every 10 s, a scrape every 5 s
    while (seen := scraped()) != want:
        assert time.monotonic() < deadline, f"Prometheus targets {seen}, want {want}"
        await asyncio.sleep(1)
    # Up with the bearer token it sends: without one, a replica's /metrics refuses (asked from inside it).
    for service in functions:
        port = stack.project.services[service]["environment"]["EBBTIDE_METRICS_PORT"]
        ask = (
            f"import urllib.request, urllib.error\ntry: urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5)\n"
            "except urllib.error.HTTPError as refused: print(refused.code)"
        )
        container = stack.project.containers(service)[0]
        assert run(["docker", "exec", container.id, "python", "-c", ask], 30).stdout.strip() == "401", service


async def test_traces_of_every_function_reached_jaeger(stack: Stack) -> None:
    """Jaeger holds spans of every function, and one order's trace spans the distributor and a receiver: read
    through Jaeger's HTTP query API (`/api/services`, `/api/traces?service=`), as a user's tools read it. In CI
    the `jaeger` service is the stand-in of deploy/ci-standins/otlp-recorder, which answers the same calls."""
    want = {f"ebbtide-{service}" for service in stack.project.function_services()}
    receivers = {"ebbtide-receiver-express", "ebbtide-receiver-standard"}

    def two_hops() -> int:
        """Traces found by the distributor's service whose spans include a receiver's."""
        now_us = int(time.time() * 1e6)  # Jaeger's start and end, in microseconds: the last hour
        query = f"service=ebbtide-distributor&limit=50&start={now_us - 3_600_000_000}&end={now_us + 60_000_000}"
        traces = stack.http_json("EBBTIDE_JAEGER_UI_PORT", f"/api/traces?{query}")
        services = [{p["serviceName"] for p in trace["processes"].values()} for trace in traces["data"]]
        return sum(1 for found in services if "ebbtide-distributor" in found and found & receivers)

    deadline = time.monotonic() + 60  # spans are exported in batches every few seconds
    while True:
        services = set(stack.http_json("EBBTIDE_JAEGER_UI_PORT", "/api/services")["data"] or [])
        if want <= services and two_hops() > 0:
            break
        assert time.monotonic() < deadline, (
            f"services in Jaeger: {sorted(services)}, want {sorted(want)}; two-hop traces: {two_hops()}"
        )
        await asyncio.sleep(1)


async def test_receiver_replica_killed_and_nats_restarted_mid_run_lose_no_order(stack: Stack) -> None:
    """While orders are published: a receiver replica is `docker kill`ed a quarter of the way through, then
    NATS restarted while publishing goes on (its publishes unconfirmed until the client reconnects, then
    retried with their Nats-Msg-Id); the restart is over before the last chunks. Every order stored once."""
    project = stack.project
    victim = project.containers("receiver-express")[0]
    [nats_before] = project.containers("nats")
    chunks, sent = 40, 0
    restart: asyncio.Task | None = None

    async def after_send() -> None:  # the publisher's hook: a chunk is sent, its confirmations not awaited
        nonlocal sent, restart
        sent += 1
        if sent == chunks // 4:
            await asyncio.to_thread(run, ["docker", "kill", victim.id], 60)
        elif sent == chunks // 4 + 2:
            restart = asyncio.create_task(asyncio.to_thread(run, ["docker", "restart", "--time", "5", nats_before.id], 120))
        elif sent == chunks - 4 and restart is not None:
            await restart

    started = time.monotonic()
    stats = await publish_orders(stack, seed=12, first_id=100_001, spread_s=6.0, chunks=chunks, after_send=after_send)
    assert sent == chunks
    assert [c.status for c in project.containers("receiver-express") if c.id == victim.id] == ["exited"]
    [nats_after] = project.containers("nats")
    assert nats_after.started_at != nats_before.started_at, "NATS was restarted"
    await check_ledger(stack, "every order stored after the faults")
    stack.timings["faults"] = time.monotonic() - started
    print(f"\npublishes retried across the NATS restart: {stats.retried}")


# -- alerts and the dashboard on the pipeline's own metrics (deploy/prometheus/, deploy/grafana/) ----------


def ebbtide_as_admin(stack: Stack, *args: str) -> str:
    """The `ebbtide` CLI on the host against the project's NATS, as `admin` (its seed, read as a user would)."""
    command = [sys.executable, "-m", "ebbtide", "--manifest", str(REPO / "ebbtide.toml"), *args]
    env = {"EBBTIDE_NATS_URL": stack.nats_url, "EBBTIDE_NATS_NKEY_SEED_FILE": str(stack.admin_seed)}
    return run(command, 120, env=env, cwd=stack.admin_seed.parent).stdout  # a folder of the test's own


async def every_replica_runs_the_candidate(stack: Stack, function: str, sha256: str) -> None:
    """Until `shadow status` shows each replica of `function` with the candidate loaded."""
    deadline = time.monotonic() + 60
    while True:
        status = await asyncio.to_thread(ebbtide_as_admin, stack, "shadow", "status", function)
        replicas = [line for line in status.splitlines() if line.strip().startswith("replica ")]
        if replicas and all(f"candidate {sha256[:12]}" in line for line in replicas):
            return
        assert time.monotonic() < deadline, status
        await asyncio.sleep(1)


async def test_a_shadow_and_a_canary_run_lose_nothing(stack: Stack, reference_manifest: LoadedManifest) -> None:
    """A shadow run of the distributor and a canary of receiver-express (each with the module it runs, from
    the host as `admin`), orders through each: every order stored once; their counts are on /metrics for
    the dashboard's rollout panels."""
    started = time.monotonic()
    wasm = reference_manifest.build_dir / "wasm"
    for function, module, start, first_id in (
        ("distributor", "distributor", ("shadow", "start", "--share", "100%"), 200_001),
        ("receiver-express", "receiver", ("canary", "--share", "50%"), 210_001),
    ):
        path = wasm / f"{module}.wasm"
        await asyncio.to_thread(ebbtide_as_admin, stack, *start, "--function", function, "--module", str(path))
        await every_replica_runs_the_candidate(stack, function, hashlib.sha256(path.read_bytes()).hexdigest())
        await publish_orders(stack, seed=first_id, first_id=first_id)
        await check_ledger(stack, f"every order stored during the {start[0]} of {function}")
        await asyncio.to_thread(ebbtide_as_admin, stack, "shadow", "abort", function)
    stack.timings["rollouts"] = time.monotonic() - started


def prometheus_query(stack: Stack, path: str, **params: str) -> dict:
    answer = stack.http_json("EBBTIDE_PROMETHEUS_PORT", f"{path}?{urllib.parse.urlencode(params)}")
    assert answer["status"] == "success", answer
    return answer["data"]


async def test_prometheus_evaluates_the_rules_and_the_dead_letters_alert_fires(stack: Stack) -> None:
    """deploy/prometheus/alerts.yml loaded by compose's Prometheus: every rule evaluated without error on the
    pipeline's metrics, and the poison published so far raises EbbtideDeadLetters (distributor, rejected)."""
    expected = {r.get("alert") or r["record"] for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]}
    deadline = time.monotonic() + 90  # rules are evaluated every 15 s
    while True:
        groups = prometheus_query(stack, "/api/v1/rules")["groups"]
        health = {rule["name"]: (rule["health"], rule.get("lastError", "")) for g in groups for rule in g["rules"]}
        firing = {
            (a["labels"]["function"], a["labels"]["reason"])
            for a in prometheus_query(stack, "/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == "EbbtideDeadLetters" and a["state"] == "firing"
        }
        if set(health) == expected and all(h == "ok" for h, _ in health.values()) and ("distributor", "rejected") in firing:
            break
        assert time.monotonic() < deadline, (health, firing)
        await asyncio.sleep(2)


async def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Each query of every panel of deploy/grafana/ebbtide.json (listed from the JSON, with the variables
    Grafana puts in) over the run so far, against compose's Prometheus: series, with values that are numbers.
    The nats-exporter's figures are the server's (the trigger stream's max_age per function)."""
    queries = dashboard.queries(dashboard.load())
    assert queries
    end = time.time()
    start = end - 900
    missing: dict[str, str] = {}
    deadline = time.monotonic() + 90  # the last scrapes and rule evaluations of the rollouts' counts
    while True:
        missing.clear()
        for query in queries:
            result = prometheus_query(
                stack, "/api/v1/query_range", query=query.promql, start=f"{start:.3f}", end=f"{time.time():.3f}", step="15"
            )["result"]
            finite = [v for series in result for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
            if not finite:
                missing[f"{query.panel} [{query.ref_id}]"] = query.promql
        if not missing:
            break
        assert time.monotonic() < deadline, f"queries without data: {missing}"
        await asyncio.sleep(5)
    ages = prometheus_query(stack, "/api/v1/query", query="ebbtide_trigger_max_age_seconds")["result"]
    manifest = load_manifest(REPO / "ebbtide.toml")
    assert {a["metric"]["function"]: float(a["value"][1]) for a in ages} == {
        name: manifest.spec.streams[manifest.stream_for(fn.trigger)].max_age_s for name, fn in manifest.spec.functions.items()
    }


def test_locust_service_headless_without_failures(stack: Stack) -> None:
    """The compose `locust` service (as `ingress`) for a bounded headless run: every publish acked and
    every order seen in its outbox (its end-to-end check, as the read-only `observer`)."""
    started = time.monotonic()
    service = stack.project.services["locust"]
    done = stack.project.compose(
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "locust",
        *service["command"],
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "--user-rate",
        "50",
        "-t",
        "15s",
        "--e2e-timeout",
        "30",
        "--exit-code-on-error",
        "1",
        "--json",
        "--only-summary",
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = {(s["method"], s["name"]): s for s in json.loads(done.stdout[done.stdout.index("[") :])}
    published = stats[("jetstream", INGRESS_SUBJECT)]
    assert published["num_requests"] > 0 and published["num_failures"] == 0, published
    e2e = [s for (kind, _), s in stats.items() if kind == "e2e"]
    assert sum(s["num_requests"] for s in e2e) > 0 and sum(s["num_failures"] for s in e2e) == 0, e2e
    stack.timings["locust"] = time.monotonic() - started
