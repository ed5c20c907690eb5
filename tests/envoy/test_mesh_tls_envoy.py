"""Mesh TLS on stock Envoy, live: a PeerAuthentication PERMISSIVE listener whose workload identity
Envoy gets by SDS from aeraki-ctl's CA (``aeraki_ctl.envoy.identity``), not from files.

aeraki-ctl serves with ``--ca`` (a test root) and a tokens file; Envoy's ADS stream carries its
token, so the ``default`` secret is a certificate for that identity and ``ROOTCA`` the root. Then,
on the one port: a plaintext Dubbo consumer is served, a consumer with a mesh certificate is served
over mutual TLS and sees Envoy's SPIFFE identity, a TLS client without a certificate is refused.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aeraki_ctl.envoy.identity import CERTIFICATE_SECRET, ROOT_SECRET
from metaprotocol_apps.dubbo import DubboConsumer, _ConsumerProtocol
from tests.envoy_node import EnvoyNode
from tests.integration.test_xds_live import ENV, IFACE, Providers, write_config
from tests.servers import free_port, wait_port
from tests.tls_certs import CertAuthority

pytestmark = pytest.mark.integration
ENVOY_ID = "spiffe://cluster.local/ns/meta-dubbo/sa/dubbo-gateway"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/consumer"
PERMISSIVE = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: meta-dubbo}
spec:
  mtls: {mode: PERMISSIVE}
"""


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    yield p
    p.stop()


class TlsConsumer(DubboConsumer):
    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        super().__init__("127.0.0.1", port, timeout=5)
        self.ctx = ctx

    async def connect(self) -> DubboConsumer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(lambda: _ConsumerProtocol(self), self.host, self.port, ssl=self.ctx, server_hostname="gateway")
        return self

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # a TLS close would wait for the peer's close_notify
        await super().close()


async def hello(consumer: DubboConsumer) -> str:
    await consumer.connect()
    try:
        return str(await consumer.call(IFACE, "sayHello", ["mesh"], attachments={"foo": "bar"}, timeout=5))
    finally:
        await consumer.close()


def test_permissive_listener_on_envoy_with_its_identity_from_sds(tmp_path: Path, providers: Providers) -> None:
    config = tmp_path / "config"
    config.mkdir()
    write_config(config, providers.ports, (100, 0))
    (config / "peer-authentication.yaml").write_text(PERMISSIVE)
    ca = CertAuthority("mesh root")
    ca_cert, ca_key = tmp_path / "ca-cert.pem", tmp_path / "ca-key.pem"
    ca_cert.write_bytes(ca.pem)
    ca_key.write_bytes(ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({ENVOY_ID: "gateway-token"}))
    xds, offset, admin = free_port(), free_port() - 20880, free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{xds}",
                            "--port-offset", str(offset), "--ca", "--ca-cert", str(ca_cert), "--ca-key", str(ca_key), "--ca-tokens", str(tokens),
                            "--admin", f"127.0.0.1:{admin}", "--log-level", "WARNING"], env=ENV)  # fmt: skip
    try:
        wait_port(xds, 20)
        with EnvoyNode(tmp_path, xds, "gateway", token="gateway-token") as envoy:
            port = 20880 + offset
            s = envoy.wait_for("s.get('listener_manager.total_listeners_active', 0) >= 1", 30)
            assert not envoy.rejected(), s
            wait_port(port, 10)

            plain = asyncio.run(hello(DubboConsumer("127.0.0.1", port, timeout=5)))
            assert plain.endswith("provider-v1")

            mesh = ssl.create_default_context(cafile=str(ca_cert))
            mesh.check_hostname = False
            client_cert = ca.write(tmp_path, "consumer", "consumer", uris=(CLIENT_ID,))
            mesh.load_cert_chain(*client_cert)
            assert asyncio.run(hello(TlsConsumer(port, mesh))).endswith("provider-v1")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, mesh.wrap_socket(raw, server_hostname="gateway") as tls:
                served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))  # type: ignore[arg-type]
            sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
            assert sans == [ENVOY_ID]  # Envoy's certificate came by SDS for its token's identity

            anonymous = ssl.create_default_context(cafile=str(ca_cert))
            anonymous.check_hostname = False
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError)):
                asyncio.run(hello(TlsConsumer(port, anonymous)))

            dump = json.dumps(envoy.config_dump())
            assert f'"name": "{CERTIFICATE_SECRET}"' in dump and f'"name": "{ROOT_SECRET}"' in dump and "tls_inspector" in dump
            assert "cert.pem" not in dump  # no file of our proxy's identity directory reaches Envoy
            assert not envoy.rejected()
            # aeraki-ctl tracks Envoy's ACKs like any proxy's
            status = subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", "proxy-status", "--admin", f"127.0.0.1:{admin}"],
                                    capture_output=True, text=True, timeout=30, env=ENV)  # fmt: skip
            row = next(line.split() for line in status.stdout.splitlines() if line.startswith("gateway "))
            assert row[1:6] == ["envoy", "SYNCED", "SYNCED", "SYNCED", "SYNCED"], status.stdout
    finally:
        ctl.terminate()
        ctl.wait(10)


def test_only_the_workload_identity_goes_by_sds() -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    from aeraki_ctl.envoy.identity import by_sds
    from metaprotocol.config.model import CommonTls, DataSource, DownstreamTls, MatchKind, SanMatcher, SanType
    from metaprotocol.xds import convert

    def tls(cert: str, key: str = "/run/id/key.pem", ca: str = "/run/id/ca.pem") -> DownstreamTls:
        san = (SanMatcher(SanType.URI, MatchKind.PREFIX, "spiffe://cluster.local/"),)
        return DownstreamTls(CommonTls(DataSource(cert), DataSource(key), DataSource(ca), san), require_client_certificate=True)

    mine = convert.downstream_tls_to_xds(tls("/run/id/cert.pem"))
    ctx = tls_pb2.DownstreamTlsContext()
    by_sds(mine, "/run/id/").typed_config.Unpack(ctx)
    common = ctx.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == [CERTIFICATE_SECRET] and not common.tls_certificates
    assert common.combined_validation_context.validation_context_sds_secret_config.name == ROOT_SECRET
    assert common.combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].matcher.prefix == "spiffe://cluster.local/"
    assert ctx.require_client_certificate.value
    users = convert.downstream_tls_to_xds(tls("/etc/certs/server.pem", "/etc/certs/server.key"))
    assert by_sds(users, "/run/id") == users  # files a user named stay files
    other_ca = convert.downstream_tls_to_xds(tls("/run/id/cert.pem", ca="/etc/partner-ca.pem"))
    assert by_sds(other_ca, "/run/id") == other_ca  # the workload certificate with a user's CA: not the mesh root
