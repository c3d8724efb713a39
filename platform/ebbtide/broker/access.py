"""Which server, and with which credentials each kind of client connects to it.

An external server: every client uses the configured credentials (EBBTIDE_NATS_* or [nats]). The
embedded server: authorization generated from the manifest into <data_dir>/auth (unless
[embedded] auth = false), so each function's process gets its own least-privilege user.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NatsConnectionError
from ..manifest import LoadedManifest
from .credentials import NatsAuth, client_auth
from .users import AuthBundle, write_bundle

if TYPE_CHECKING:  # a function process never starts a server: it does not load the code that does
    from .embedded import EmbeddedNats

NATS_URL_ENV = "EBBTIDE_NATS_URL"

AUTH_FOLDER = "auth"


@dataclass(frozen=True)
class ServerAccess:
    url: str
    admin: NatsAuth  # provisioning, operator tools that change state, and a host that runs several functions
    bundle: AuthBundle | None = None  # generated users: one per function, ingress, observer

    def for_reading(self) -> NatsAuth:
        """Commands that only read (top, outbox get/list, dlq list/show) use the read-only `observer` user
        when there are generated users; against an external server, the configured credentials (give them
        the observer's seed there too: EBBTIDE_NATS_NKEY_SEED_FILE=observer.nk)."""
        if self.bundle is not None:
            return self.admin.with_credentials(self.bundle.observer())
        return self.admin

    def for_scaler(self) -> NatsAuth:
        """`ebbtide scaler` reads the lag as the generated `scaler` user; against an external server, with the
        configured credentials (give it the scaler's seed: EBBTIDE_NATS_NKEY_SEED_FILE=scaler.nk)."""
        if self.bundle is not None:
            return self.admin.with_credentials(self.bundle.scaler())
        return self.admin

    def for_functions(self, functions: list[str]) -> NatsAuth:
        """A host running exactly one function uses that function's user (when there are generated users)."""
        if self.bundle is not None and len(functions) == 1:
            return self.admin.with_credentials(self.bundle.function(functions[0]))
        return self.admin


def external_access(manifest: LoadedManifest, url: str) -> ServerAccess:
    return ServerAccess(url, client_auth(manifest))


def embedded_auth_folder(manifest: LoadedManifest, data_dir: Path | None = None) -> Path:
    return (data_dir or manifest.resolve(manifest.spec.embedded.data_dir)) / AUTH_FOLDER


def embedded_client_access(manifest: LoadedManifest) -> ServerAccess:
    """For client commands (publish, top, dlq) talking to the embedded server that `ebbtide up` runs."""
    embedded = manifest.spec.embedded
    url = f"nats://{embedded.host}:{embedded.port}"
    if not embedded.auth:
        return ServerAccess(url, NatsAuth())
    folder = embedded_auth_folder(manifest)
    bundle = AuthBundle(folder)
    if not bundle.seed_file("admin").exists():
        raise NatsConnectionError(f"no credentials in {folder}: start the embedded server with `ebbtide up` first")
    return ServerAccess(url, bundle.admin(), bundle)


@contextmanager
def embedded_server(
    manifest: LoadedManifest,
    data_dir: Path | None = None,
    *,
    port: int | None = None,
    monitor_port: int | None = None,
    auth: bool | None = None,
) -> Iterator[tuple[EmbeddedNats, ServerAccess]]:
    """Start the embedded server (settings from [embedded] unless given) and say how to reach it."""
    from .embedded import EmbeddedNats

    embedded = manifest.spec.embedded
    folder = data_dir or manifest.resolve(embedded.data_dir)
    use_auth = embedded.auth if auth is None else auth
    bundle = write_bundle(manifest, embedded_auth_folder(manifest, folder)) if use_auth else None
    with EmbeddedNats(
        folder,
        host=embedded.host,
        port=embedded.port if port is None else port,
        monitor_port=embedded.monitor_port if monitor_port is None else monitor_port,
        config_file=bundle.server_config if bundle else None,
    ) as server:
        yield server, ServerAccess(server.url, bundle.admin() if bundle else NatsAuth(), bundle)


def client_access(manifest: LoadedManifest, flag: str | None) -> ServerAccess:
    """For client commands: the configured server, else the embedded one that `ebbtide up` starts
    (as its admin user, when it has generated users)."""
    url = configured_url(manifest, flag)
    return external_access(manifest, url) if url is not None else embedded_client_access(manifest)


def configured_url(manifest: LoadedManifest, flag: str | None = None) -> str | None:
    """The NATS URL to use, or None for the embedded server. Precedence: flag, environment, manifest."""
    return flag or os.environ.get(NATS_URL_ENV) or manifest.spec.nats.url or None
