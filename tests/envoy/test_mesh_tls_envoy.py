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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aeraki_ctl.envoy.identity import CERTIFICATE_SECRET, ROOT_SECRET
from metaprotocol.spi.errors import RemoteProtocolError
from metaprotocol_apps.dubbo import DubboConsumer, DubboError, _ConsumerProtocol
from tests.envoy_node import EnvoyNode
from tests.integration.test_xds_live import ENV, IFACE, Providers, write_config
from tests.servers import free_port, wait_port
from tests.tls_certs import CertAuthority

pytestmark = pytest.mark.integration
ENVOY_ID = "spiffe://cluster.local/ns/meta-dubbo/sa/dubbo-gateway"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/consumer"
PEER_AUTHENTICATION = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: meta-dubbo}}
spec:
  mtls: {{mode: {mode}}}
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


@dataclass
class Gateway:
    """aeraki-ctl with the CA and an Envoy node holding the gateway's token, on one mode."""

    port: int
    admin: int
    ca: CertAuthority
    ca_file: Path
    folder: Path
    envoy: EnvoyNode

    def context(self, uri: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = False
        if uri is not None:
            ctx.load_cert_chain(*self.ca.write(self.folder, uri.rsplit("/", 1)[-1] + "-" + uri.split("/")[2], "client", uris=(uri,)))
        return ctx


@contextmanager
def gateway(tmp_path: Path, providers: Providers, mode: str) -> Iterator[Gateway]:
    config = tmp_path / "config"
    config.mkdir()
    write_config(config, providers.ports, (100, 0))
    (config / "peer-authentication.yaml").write_text(PEER_AUTHENTICATION.format(mode=mode))
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
            s = envoy.wait_for("s.get('listener_manager.total_listeners_active', 0) >= 1", 30)
            assert not envoy.rejected(), s
            wait_port(20880 + offset, 10)
            yield Gateway(20880 + offset, admin, ca, ca_cert, tmp_path, envoy)
            assert not envoy.rejected()
    finally:
        ctl.terminate()
        ctl.wait(10)


def shape(envoy: EnvoyNode) -> tuple[list[str], list[str]]:
    """The served listener's listener filters and its chains' transport protocols, as Envoy holds them."""
    configs = envoy.config_dump()["configs"]
    assert isinstance(configs, list)
    listeners = next(c for c in configs if c["@type"].endswith("ListenersConfigDump"))["dynamic_listeners"]
    [active] = [entry["active_state"]["listener"] for entry in listeners]
    chains = [c.get("filter_chain_match", {}).get("transport_protocol", "") for c in active["filter_chains"]]
    return [f["name"] for f in active.get("listener_filters", [])], chains


def refused_promptly(consumer: DubboConsumer) -> bool:
    """The call fails, and well before its 5 s timeout: refused, not left hanging."""
    start = time.monotonic()
    try:
        asyncio.run(hello(consumer))
    except (ssl.SSLError, ConnectionError, OSError, DubboError, RemoteProtocolError):  # a plaintext client may read Envoy's TLS alert
        return time.monotonic() - start < 3
    return False


def test_permissive_listener_on_envoy_with_its_identity_from_sds(tmp_path: Path, providers: Providers) -> None:
    with gateway(tmp_path, providers, "PERMISSIVE") as gw:
        assert asyncio.run(hello(DubboConsumer("127.0.0.1", gw.port, timeout=5))).endswith("provider-v1")
        assert asyncio.run(hello(TlsConsumer(gw.port, gw.context(CLIENT_ID)))).endswith("provider-v1")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw, gw.context(CLIENT_ID).wrap_socket(raw, server_hostname="gateway") as tls:
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))  # type: ignore[arg-type]
        sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
        assert sans == [ENVOY_ID]  # Envoy's certificate came by SDS for its token's identity
        assert refused_promptly(TlsConsumer(gw.port, gw.context(None)))  # TLS without a certificate
        dump = json.dumps(gw.envoy.config_dump())
        assert f'"name": "{CERTIFICATE_SECRET}"' in dump and f'"name": "{ROOT_SECRET}"' in dump
        assert "cert.pem" not in dump  # no file of our proxy's identity directory reaches Envoy
        assert shape(gw.envoy) == (["envoy.filters.listener.tls_inspector"], ["tls", "raw_buffer"])
        # aeraki-ctl tracks Envoy's ACKs like any proxy's
        status = subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", "proxy-status", "--admin", f"127.0.0.1:{gw.admin}"],
                                capture_output=True, text=True, timeout=30, env=ENV)  # fmt: skip
        row = next(line.split() for line in status.stdout.splitlines() if line.startswith("gateway "))
        assert row[1:6] == ["envoy", "SYNCED", "SYNCED", "SYNCED", "SYNCED"], status.stdout


def test_strict_listener_on_envoy_refuses_plaintext_and_a_foreign_trust_domain(tmp_path: Path, providers: Providers) -> None:
    with gateway(tmp_path, providers, "STRICT") as gw:
        assert asyncio.run(hello(TlsConsumer(gw.port, gw.context(CLIENT_ID)))).endswith("provider-v1")
        assert refused_promptly(DubboConsumer("127.0.0.1", gw.port, timeout=5))  # plaintext
        assert refused_promptly(TlsConsumer(gw.port, gw.context("spiffe://partner.example/ns/shop/sa/consumer")))  # SAN check kept by SDS
        assert shape(gw.envoy) == ([], [""])


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
