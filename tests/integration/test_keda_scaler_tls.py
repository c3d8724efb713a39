"""`ebbtide scaler` over TLS with client certificates (KEDA's `enableTLS` and a TriggerAuthentication's
caCert, tlsClientCert, tlsClientKey): KEDA's client with the CA's certificate is answered; one without a
client certificate, or trusting another CA, is not."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio
import pytest

from ebbtide.broker import EmbeddedNats, connect, provision
from ebbtide.broker.credentials import NatsAuth
from ebbtide.kedascaler.service import ScalerServer, ScalerSettings, TlsFiles
from ebbtide.manifest import LoadedManifest
from tests.integration.test_nats_credentials import _certificates
from tests.keda_proto import KedaProto, keda_proto_fixture  # noqa: F401 (the fixture keda_proto)


async def test_grpc_over_tls_answers_only_clients_with_a_certificate(
    tmp_path: Path, reference_manifest: LoadedManifest, keda_proto: KedaProto
) -> None:
    certs = _certificates(tmp_path / "certs")
    other = _certificates(tmp_path / "other-ca")
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0) as server:
        admin = await connect(server.url, "tls-test")
        await provision(admin.jetstream(), reference_manifest)
        tls = TlsFiles(certs / "server.pem", certs / "server.key", certs / "ca.pem")
        scaler = await ScalerServer(reference_manifest, ScalerSettings(server.url, NatsAuth(), grpc_port=0, tls=tls)).start()
        pb = keda_proto.messages
        ref = pb.ScaledObjectRef(name="distributor", namespace="ebbtide", scalerMetadata={"function": "distributor"})
        address = f"127.0.0.1:{scaler.grpc_port}"

        async def metric_spec(credentials: grpc.ChannelCredentials) -> str:
            async with grpc.aio.secure_channel(address, credentials) as channel:
                reply = await keda_proto.services.ExternalScalerStub(channel).GetMetricSpec(ref, timeout=10)
                return str(reply.metricSpecs[0].metricName)

        def read(path: Path) -> bytes:
            return path.read_bytes()

        try:
            keda = grpc.ssl_channel_credentials(read(certs / "ca.pem"), read(certs / "client.key"), read(certs / "client.pem"))
            assert await metric_spec(keda) == "ebbtide-lag-distributor"
            for refused in (
                grpc.ssl_channel_credentials(read(certs / "ca.pem")),  # no client certificate
                grpc.ssl_channel_credentials(read(other / "ca.pem"), read(other / "client.key"), read(other / "client.pem")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await metric_spec(refused)
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            async with grpc.aio.insecure_channel(address) as plain:  # and no plaintext at all
                with pytest.raises(grpc.aio.AioRpcError):
                    await keda_proto.services.ExternalScalerStub(plain).GetMetricSpec(ref, timeout=5)
        finally:
            await scaler.stop()
            await admin.drain()
