"""Every kind of NATS credential a host can be given (token, user and password, TLS with a client
certificate), from the manifest or the environment, against real servers; secrets never reach the logs."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from ebbtide.broker import EmbeddedNats, connect
from ebbtide.broker.credentials import NatsAuth, client_auth
from ebbtide.errors import NatsConnectionError
from ebbtide.host import Host
from ebbtide.manifest import load_manifest
from tests.components import require
from tests.conftest import manifest_copy, provision_for

SECRET = "s3cret-Value-that-must-not-leak"


async def _host_connects(manifest_path: Path, server: EmbeddedNats) -> None:
    await provision_for(load_manifest(manifest_path), server.url, client_auth(load_manifest(manifest_path)))
    async with Host(load_manifest(manifest_path), server.url, ["distributor"]) as host:
        assert host.nc is not None and host.nc.is_connected
        assert (await host.nc.jetstream().consumer_info("ORDERS", "distributor")).config.durable_name == "distributor"


async def test_token_from_the_environment(
    tmp_path: Path, reference_manifest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = manifest_copy(tmp_path)
    caplog.set_level(logging.DEBUG)
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, extra_args=("--auth", SECRET)) as server:
        monkeypatch.setenv("EBBTIDE_NATS_TOKEN", SECRET)
        await _host_connects(path, server)
        monkeypatch.setenv("EBBTIDE_NATS_TOKEN", "wrong-" + SECRET)
        with pytest.raises(NatsConnectionError, match=r"refused the credentials \(token\)") as refused:
            await connect(server.url, "test", give_up_after_s=10, auth=client_auth(load_manifest(path)))
    assert SECRET not in str(refused.value) and SECRET not in caplog.text
    assert SECRET not in repr(NatsAuth(token=SECRET, password=SECRET, user="u"))


async def test_user_in_the_manifest_password_in_the_environment(
    tmp_path: Path, reference_manifest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = manifest_copy(tmp_path)
    path.write_text(path.read_text().replace('url = ""', 'url = ""\nuser = "orders-host"'))
    monkeypatch.setenv("EBBTIDE_NATS_PASSWORD", SECRET)
    caplog.set_level(logging.DEBUG)
    with EmbeddedNats(
        tmp_path / "nats", port=0, monitor_port=0, extra_args=("--user", "orders-host", "--pass", SECRET)
    ) as server:
        await _host_connects(path, server)
    assert SECRET not in caplog.text


async def test_tls_with_a_client_certificate(tmp_path: Path, reference_manifest) -> None:
    certs = _certificates(tmp_path / "certs")
    path, _ = manifest_copy(tmp_path)
    path.write_text(
        path.read_text().replace(
            'url = ""',
            f'url = ""\ntls_ca = "{certs / "ca.pem"}"\ntls_cert = "{certs / "client.pem"}"\ntls_key = "{certs / "client.key"}"',
        )
    )
    tls = (
        "--tlsverify",
        "--tlscert",
        str(certs / "server.pem"),
        "--tlskey",
        str(certs / "server.key"),
        "--tlscacert",
        str(certs / "ca.pem"),
    )
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0, extra_args=tls) as server:
        await _host_connects(path, server)
        without_client_certificate = NatsAuth(tls_ca=str(certs / "ca.pem"))
        with pytest.raises(ConnectionError):  # --tlsverify: the server wants to know who we are
            await connect(server.url, "test", give_up_after_s=3, auth=without_client_certificate)


def _certificates(folder: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    require(None if shutil.which("openssl") else "no openssl command (Debian: apt-get install openssl)", "openssl")
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=ebbtide test CA",
    )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )
    return folder
