"""A `docker compose` project of docker-compose.yml on this machine's Docker engine, for the end-to-end test.

Works with Compose v2 (`docker compose`) or v1 (`docker-compose`, what Debian 12 packages): both label
their containers the same way, so containers are found and waited on through `docker` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# BuildKit fetches its Dockerfile frontend from Docker Hub, which CI cannot reach: the classic builder.
BUILD_ENV = {"DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}
ENGINE_SETUP = ".ci/docker-engine"  # installs and starts the engine, makes the CI stand-in images


def run(
    command: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def answers(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def compose_command() -> list[str] | None:
    """`docker compose` where the v2 plugin exists, else `docker-compose` (v1), else None."""
    if shutil.which("docker") and answers(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def why_not_runnable(compose_file: Path) -> str | None:
    """Why the compose project cannot run here (for the skip message), or None."""
    if not shutil.which("docker"):
        return f"no docker command (run `bash {ENGINE_SETUP}` as root)"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
        said = (info.stderr.strip().splitlines() or ["docker info failed"])[-1] if info.returncode else ""
    except subprocess.TimeoutExpired:
        said = "docker info did not answer within 30 s"
    if said:
        return f"no Docker engine reachable ({said}); run `bash {ENGINE_SETUP}` as root"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    missing = [image for image in pulled_images(compose_file) if not answers(["docker", "image", "inspect", image])]
    if missing:
        return (
            f"images {', '.join(missing)} are not on this engine (`docker compose pull` them, or where Docker Hub "
            f"cannot be reached run `bash {ENGINE_SETUP}` to make CI stand-ins)"
        )
    return None


def pulled_images(compose_file: Path) -> list[str]:
    """The images the project uses but does not build: the compose file's (but for services under a profile,
    which `up` does not start), and the Dockerfile's base."""
    services = yaml.safe_load(compose_file.read_text())["services"]
    images = {s["image"] for s in services.values() if "image" in s and "build" not in s and not s.get("profiles")}
    dockerfile = (compose_file.parent / "Dockerfile").read_text()
    images |= {line.split("=", 1)[1].strip() for line in dockerfile.splitlines() if line.startswith("ARG PYTHON_IMAGE=")}
    return sorted(images)


def image_ids() -> set[str]:
    """Every image on the engine, intermediate ones of the classic builder included."""
    return set(run(["docker", "images", "--all", "--quiet", "--no-trunc"], 60).stdout.split())


def remove_images(tags: Sequence[str], made_since: set[str]) -> None:
    """The tagged images, then whatever else appeared since `made_since` (the build stage, intermediates)."""
    run(["docker", "image", "rm", *tags], 120, check=False)
    if made := image_ids() - made_since:
        run(["docker", "image", "rm", *made], 120, check=False)  # some went with their children already


@dataclass
class Container:
    id: str
    service: str
    status: str  # created, running, exited, ...
    health: str | None  # starting, healthy, unhealthy; None without a health check
    exit_code: int
    started_at: str  # as Docker reports it (RFC 3339)
    ip: str  # on the project's network

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> Container:
        state = data["State"]
        networks = data["NetworkSettings"]["Networks"] or {}
        return cls(
            data["Id"],
            data["Config"]["Labels"]["com.docker.compose.service"],
            state["Status"],
            (state.get("Health") or {}).get("Status"),
            state["ExitCode"],
            state["StartedAt"],
            next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), ""),
        )


class ComposeProject:
    def __init__(self, repo: Path, name: str, env: dict[str, str]) -> None:
        compose = compose_command()
        assert compose, "no docker compose"
        self.repo = repo
        self.name = name
        self.env = {**BUILD_ENV, **env}
        self.base = [*compose, "--project-name", name, "--file", str(repo / "docker-compose.yml")]
        services = yaml.safe_load((repo / "docker-compose.yml").read_text())["services"]
        # What `up` starts: not the services under a profile (Grafana's).
        self.services: dict[str, Any] = {name: s for name, s in services.items() if not s.get("profiles")}

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], timeout, self.env, self.repo, check)

    def containers(self, service: str | None = None) -> list[Container]:
        """The project's containers (stopped ones too), found by compose's labels."""
        filters = ["--filter", f"label=com.docker.compose.project={self.name}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = run(["docker", "ps", "--all", "--quiet", "--no-trunc", *filters], 30).stdout.split()
        if not ids:
            return []
        return [Container.from_inspect(c) for c in json.loads(run(["docker", "inspect", *ids], 30).stdout)]

    def one_shot(self, service: str) -> bool:
        """A service others wait for to complete (`condition: service_completed_successfully`)."""
        return any(
            isinstance(s.get("depends_on"), dict)
            and s["depends_on"].get(service, {}).get("condition") == "service_completed_successfully"
            for s in self.services.values()
        )

    def function_services(self) -> list[str]:
        """The services that run a function (`ebbtide run --function NAME`)."""
        return [name for name, s in self.services.items() if (s.get("command") or [])[:3] == ["ebbtide", "run", "--function"]]

    def expected_replicas(self, service: str) -> int:
        return int(self.services[service].get("deploy", {}).get("replicas", 1))

    def not_ready(self) -> list[str]:
        """What is not ready yet: one-shot services must have exited 0, the others be running and, where
        they have a health check, healthy, with as many replicas as the file asks for."""
        containers = self.containers()
        waiting = []
        for service in self.services:
            mine = [c for c in containers if c.service == service]
            if len(mine) < (1 if self.one_shot(service) else self.expected_replicas(service)):
                waiting.append(f"{service}: {len(mine)} container(s)")
            for c in mine:
                if self.one_shot(service):
                    if c.status == "exited" and c.exit_code != 0:
                        raise AssertionError(f"one-shot service {service} exited {c.exit_code}:\n{self.logs(service)}")
                    if c.status != "exited":
                        waiting.append(f"{service}: {c.status}")
                elif c.status != "running" or c.health not in (None, "healthy"):
                    waiting.append(f"{service}: {c.status}/{c.health}")
        return waiting

    def wait_ready(self, timeout: float) -> float:
        """Poll until every service is ready (as `docker compose up --wait` does); the seconds it took."""
        started = time.monotonic()
        while waiting := self.not_ready():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not ready within {timeout:.0f} s: {waiting}\n{self.logs()}")
            time.sleep(0.5)
        return time.monotonic() - started

    def read_file(self, service: str, path: str) -> str:
        """A file of the service's volumes, read as a user would (deploy/README.md): `run --rm cat`."""
        return self.compose("run", "--rm", "--no-deps", "-T", service, "cat", path, timeout=60).stdout

    def logs(self, service: str | None = None, tail: int = 40) -> str:
        done = self.compose("logs", "--no-color", f"--tail={tail}", *([service] if service else []), timeout=60, check=False)
        return done.stdout[-20000:]

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180, check=False)
